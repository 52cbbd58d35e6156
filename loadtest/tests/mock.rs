//! Integration tests of `bursar-load mock`: the real binary on a free
//! loopback port, spoken to over real sockets with a tiny HTTP/1.1 client
//! that exposes what a gateway's upstream client would see (chunk
//! boundaries, resets, cut bodies).

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// How long any socket read may block before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- harness

/// A running mock process, killed on drop.
struct Mock {
    child: Child,
    addr: String,
}

impl Mock {
    fn start() -> Mock {
        Mock::start_with(&[])
    }

    /// Starts the binary on port 0 and reads the bound address from its
    /// `mock listening on ADDR` line.
    fn start_with(extra: &[&str]) -> Mock {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bursar-load"))
            .args(["mock", "--listen", "127.0.0.1:0", "--quiet"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bursar-load mock");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read start line");
        let addr = line
            .trim()
            .strip_prefix("mock listening on ")
            .unwrap_or_else(|| panic!("unexpected start line {line:?}"))
            .to_owned();
        Mock { child, addr }
    }

    fn client(&self) -> Client {
        let stream = TcpStream::connect(&self.addr).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    /// One request on a fresh connection.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        self.client()
            .request(method, path, headers, body)
            .expect("response head")
    }

    fn post(&self, path: &str, body: &Value) -> Resp {
        self.request("POST", path, &[], &body.to_string())
    }

    fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
        self.request("POST", path, headers, &body.to_string())
    }

    fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], "")
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A keep-alive HTTP/1.1 connection.
struct Client {
    reader: BufReader<TcpStream>,
}

/// A response as the client saw it.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Size of each HTTP chunk of a chunked body, in order.
    chunks: Vec<usize>,
    /// When each chunk arrived, measured from the request.
    chunk_times: Vec<Duration>,
    /// The error that ended the body early, if any.
    error: Option<io::Error>,
}

impl Client {
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> io::Result<()> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: mock\r\ncontent-length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            req.push_str("content-type: application/json\r\n");
        }
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.reader.get_mut().write_all(req.as_bytes())
    }

    /// Sends a request and reads its response; `Err` if no head arrived.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> io::Result<Resp> {
        let start = Instant::now();
        self.send(method, path, headers, body)?;
        let (status, headers) = self.read_head()?;
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
            chunks: Vec::new(),
            chunk_times: Vec::new(),
            error: None,
        };
        let result = if resp.header("transfer-encoding") == Some("chunked") {
            self.read_chunked(&mut resp, start)
        } else {
            let len: usize = resp
                .header("content-length")
                .expect("content-length or chunked")
                .parse()
                .unwrap();
            resp.body.resize(len, 0);
            self.reader.read_exact(&mut resp.body)
        };
        resp.error = result.err();
        Ok(resp)
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(ErrorKind::UnexpectedEof, "eof"));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn read_head(&mut self) -> io::Result<(u16, Vec<(String, String)>)> {
        let status_line = self.read_line()?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                return Ok((status, headers));
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
    }

    fn read_chunked(&mut self, resp: &mut Resp, start: Instant) -> io::Result<()> {
        loop {
            let size_line = self.read_line()?;
            let size = usize::from_str_radix(size_line.trim(), 16).expect("chunk size");
            if size == 0 {
                let trailer_end = self.read_line()?;
                assert!(trailer_end.is_empty(), "no trailers expected");
                return Ok(());
            }
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk)?;
            assert_eq!(&chunk[size..], b"\r\n");
            resp.body.extend_from_slice(&chunk[..size]);
            resp.chunks.push(size);
            resp.chunk_times.push(start.elapsed());
        }
    }
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    fn json(&self) -> Value {
        assert!(self.error.is_none(), "body error: {:?}", self.error);
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// The SSE events as (event name, data) pairs.
    fn events(&self) -> Vec<(Option<String>, String)> {
        let text = self.text();
        let complete = match text.rfind("\n\n") {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .split("\n\n")
            .filter(|block| !block.is_empty())
            .map(|block| {
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = Some(n.to_owned());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    } else {
                        panic!("unexpected SSE line {line:?}");
                    }
                }
                (name, data)
            })
            .collect()
    }

    /// The `data:` payloads of a chat/completions stream.
    fn data(&self) -> Vec<String> {
        self.events().into_iter().map(|(_, d)| d).collect()
    }

    /// The JSON chunks of a chat/completions stream (everything but `[DONE]`).
    fn chunks_json(&self) -> Vec<Value> {
        self.data()
            .iter()
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    fn error_kind(&self) -> Option<ErrorKind> {
        self.error.as_ref().map(io::Error::kind)
    }
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

fn chat_body(messages: Value, extra: Value) -> Value {
    let mut body = json!({"model": "gpt-4o-mini", "messages": messages});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// Chat stream content deltas, concatenated.
fn streamed_chat_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// The number of chat chunks that carry a word.
fn content_chunks(chunks: &[Value]) -> usize {
    chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count()
}

fn assert_error_shape(resp: &Resp, status: u16, kind: &str) {
    assert_eq!(resp.status, status, "{}", resp.text());
    let err = &resp.json()["error"];
    assert!(err["message"].is_string(), "{err}");
    assert_eq!(err["type"], kind);
    assert!(
        err.get("param").is_some() && err.get("code").is_some(),
        "{err}"
    );
}

// ------------------------------------------------------------ endpoints

#[test]
fn health() {
    let mock = Mock::start();
    let resp = mock.get("/health");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), json!({"status": "ok"}));
}

#[test]
fn chat_plain_has_exact_usage_and_is_deterministic() {
    let mock = Mock::start();
    let messages = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [
            {"type": "text", "text": "Say hello"},
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
            {"type": "text", "text": "to the world"}
        ]}
    ]);
    let body = chat_body(messages, json!({"max_tokens": 7}));
    let resp = mock.post("/v1/chat/completions", &body);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(resp.header("content-length").is_some());
    let v = resp.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["finish_reason"], "length");
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(words(content), 7);
    assert!(content.bytes().all(|b| b == b' ' || b.is_ascii_lowercase()));
    // (3 + 3) + (3 + 5) + 3: "You are terse." and "Say hello to the world".
    assert_eq!(
        v["usage"],
        json!({
            "prompt_tokens": 17, "completion_tokens": 7, "total_tokens": 24,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        })
    );
    let again = mock.post("/v1/chat/completions", &body).json();
    assert_eq!(again["choices"], v["choices"]);
    assert_eq!(again["usage"], v["usage"]);
    assert_eq!(again["id"], v["id"]);
}

#[test]
fn chat_length_rules() {
    let mock = Mock::start();
    let call = |extra: Value, headers: &[(&str, &str)]| {
        mock.post_with(
            "/v1/chat/completions",
            headers,
            &chat_body(user("hi"), extra),
        )
        .json()
    };
    let default = call(json!({}), &[]);
    assert_eq!(
        words(
            default["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
        ),
        16
    );
    assert_eq!(default["choices"][0]["finish_reason"], "stop");
    assert_eq!(default["usage"]["prompt_tokens"], 3 + 1 + 3);
    let preferred = call(json!({"max_tokens": 9, "max_completion_tokens": 4}), &[]);
    assert_eq!(preferred["usage"]["completion_tokens"], 4);
    assert_eq!(preferred["choices"][0]["finish_reason"], "length");
    let header = call(
        json!({"max_tokens": 10}),
        &[("x-mock-completion-tokens", "3")],
    );
    assert_eq!(header["usage"]["completion_tokens"], 3);
    assert_eq!(header["choices"][0]["finish_reason"], "stop");
    let empty = call(json!({}), &[("x-mock-completion-tokens", "0")]);
    assert_eq!(empty["choices"][0]["message"]["content"], "");
    // The text depends on the last message only.
    let a = call(json!({"max_tokens": 5}), &[]);
    let b = mock
        .post(
            "/v1/chat/completions",
            &chat_body(
                json!([{"role": "system", "content": "other"}, {"role": "user", "content": "hi"}]),
                json!({"max_tokens": 5}),
            ),
        )
        .json();
    assert_eq!(
        a["choices"][0]["message"]["content"],
        b["choices"][0]["message"]["content"]
    );
}

#[test]
fn chat_stream_without_include_usage() {
    let mock = Mock::start();
    let plain = mock
        .post(
            "/v1/chat/completions",
            &chat_body(user("tell me a story"), json!({"max_tokens": 5})),
        )
        .json();
    let resp = mock.post(
        "/v1/chat/completions",
        &chat_body(
            user("tell me a story"),
            json!({"max_tokens": 5, "stream": true}),
        ),
    );
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert!(resp.error.is_none());
    let data = resp.data();
    // role + 5 words + finish + [DONE]
    assert_eq!(data.len(), 8, "{data:?}");
    assert_eq!(data.last().unwrap(), "[DONE]");
    // Every event is its own HTTP chunk.
    assert_eq!(resp.chunks.len(), 8);
    let chunks = resp.chunks_json();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o-mini");
        assert!(
            c.get("usage").is_none(),
            "no usage key without include_usage: {c}"
        );
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": "", "refusal": null})
    );
    for (i, c) in chunks[1..6].iter().enumerate() {
        let word = c["choices"][0]["delta"]["content"].as_str().unwrap();
        assert_eq!(word.starts_with(' '), i > 0, "{word:?}");
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
    }
    assert_eq!(chunks[6]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "length");
    assert_eq!(
        streamed_chat_text(&chunks),
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[test]
fn chat_stream_with_include_usage() {
    let mock = Mock::start();
    let body = chat_body(
        user("one two three four"),
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let resp = mock.post("/v1/chat/completions", &body);
    let data = resp.data();
    // role + 16 words + finish + usage + [DONE]
    assert_eq!(data.len(), 20);
    assert_eq!(data[19], "[DONE]");
    let chunks = resp.chunks_json();
    for c in &chunks[..18] {
        assert_eq!(c["usage"], Value::Null, "usage: null on every chunk: {c}");
        assert!(c.get("usage").is_some());
    }
    assert_eq!(chunks[17]["choices"][0]["finish_reason"], "stop");
    let last = &chunks[18];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 3 + 4 + 3);
    assert_eq!(last["usage"]["completion_tokens"], 16);
    assert_eq!(last["usage"]["total_tokens"], 26);
    assert_eq!(content_chunks(&chunks), 16);
}

#[test]
fn completions_plain_and_streamed() {
    let mock = Mock::start();
    let v = mock
        .post(
            "/v1/completions",
            &json!({"model": "gpt-3.5-turbo-instruct", "prompt": "one two three", "max_tokens": 4}),
        )
        .json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "gpt-3.5-turbo-instruct");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(words(v["choices"][0]["text"].as_str().unwrap()), 4);
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    );

    let arr = mock
        .post(
            "/v1/completions",
            &json!({"model": "m", "prompt": ["a b", "c"], "max_tokens": 1}),
        )
        .json();
    assert_eq!(arr["usage"]["prompt_tokens"], 3);
    let empty = mock
        .post(
            "/v1/completions",
            &json!({"model": "m", "prompt": "", "max_tokens": 1}),
        )
        .json();
    assert_eq!(empty["usage"]["prompt_tokens"], 1);
    let ids = mock
        .post(
            "/v1/completions",
            &json!({"model": "m", "prompt": [[1, 2, 3], [4]], "max_tokens": 1}),
        )
        .json();
    assert_eq!(ids["usage"]["prompt_tokens"], 4);

    let body = json!({"model": "m", "prompt": "one two three", "max_tokens": 4, "stream": true,
        "stream_options": {"include_usage": true}});
    let resp = mock.post("/v1/completions", &body);
    let data = resp.data();
    // 4 words + finish + usage + [DONE]
    assert_eq!(data.len(), 7);
    assert_eq!(data[6], "[DONE]");
    let chunks = resp.chunks_json();
    let text: String = chunks[..4]
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    let plain = mock
        .post(
            "/v1/completions",
            &json!({"model": "m", "prompt": "one two three", "max_tokens": 4}),
        )
        .json();
    assert_eq!(text, plain["choices"][0]["text"].as_str().unwrap());
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(
        chunks[5]["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    );
    assert!(chunks[..5].iter().all(|c| c["usage"].is_null()));
}

#[test]
fn embeddings_float_and_base64_agree() {
    let mock = Mock::start();
    let body =
        json!({"model": "text-embedding-3-small", "input": ["a b c", "d", ""], "dimensions": 8});
    let v = mock.post("/v1/embeddings", &body).json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 3 + 1 + 1, "total_tokens": 5})
    );
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let floats: Vec<Vec<f32>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    for vector in &floats {
        assert_eq!(vector.len(), 8);
        let norm: f32 = vector.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    assert_ne!(floats[0], floats[1]);

    let mut b64_body = body.clone();
    b64_body["encoding_format"] = json!("base64");
    let b64 = mock.post("/v1/embeddings", &b64_body).json();
    for (d, expected) in b64["data"].as_array().unwrap().iter().zip(&floats) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(&decoded, expected);
    }

    let default_dims = mock
        .post(
            "/v1/embeddings",
            &json!({"model": "m", "input": "hello world"}),
        )
        .json();
    assert_eq!(
        default_dims["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .len(),
        16
    );
    assert_eq!(default_dims["usage"]["prompt_tokens"], 2);
    let ids = mock
        .post("/v1/embeddings", &json!({"model": "m", "input": [1, 2, 3]}))
        .json();
    assert_eq!(ids["data"].as_array().unwrap().len(), 1);
    assert_eq!(ids["usage"]["prompt_tokens"], 3);
    let nested = mock
        .post(
            "/v1/embeddings",
            &json!({"model": "m", "input": [[1, 2], [3]]}),
        )
        .json();
    assert_eq!(nested["data"].as_array().unwrap().len(), 2);
    assert_eq!(nested["usage"]["prompt_tokens"], 3);
}

#[test]
fn responses_plain() {
    let mock = Mock::start();
    let v = mock
        .post(
            "/v1/responses",
            &json!({"model": "gpt-4o", "input": "hello big world", "max_output_tokens": 4}),
        )
        .json();
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["model"], "gpt-4o");
    let message = &v["output"][0];
    assert_eq!(message["type"], "message");
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["status"], "completed");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["content"][0]["type"], "output_text");
    assert_eq!(message["content"][0]["annotations"], json!([]));
    assert_eq!(words(message["content"][0]["text"].as_str().unwrap()), 4);
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
               "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13})
    );
    let items = json!([
        {"role": "user", "content": "a b"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "c d e"}]}
    ]);
    let v = mock
        .post("/v1/responses", &json!({"model": "m", "input": items}))
        .json();
    assert_eq!(v["usage"]["input_tokens"], (3 + 2) + (3 + 3) + 3);
    assert_eq!(v["usage"]["output_tokens"], 16);
}

#[test]
fn responses_stream_ends_with_completed_usage() {
    let mock = Mock::start();
    let body = json!({"model": "gpt-4o", "input": "hello big world", "max_output_tokens": 3, "stream": true});
    let resp = mock.post("/v1/responses", &body);
    assert!(resp.error.is_none());
    let events = resp.events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let parsed: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    for (i, (ev, name)) in parsed.iter().zip(&names).enumerate() {
        assert_eq!(ev["type"], *name);
        assert_eq!(ev["sequence_number"], i);
    }
    let deltas: String = parsed[4..7]
        .iter()
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(parsed[7]["text"], deltas.as_str());
    let completed = &parsed[10]["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(
        completed["output"][0]["content"][0]["text"],
        deltas.as_str()
    );
    assert_eq!(completed["usage"]["input_tokens"], 9);
    assert_eq!(completed["usage"]["output_tokens"], 3);
    assert_eq!(completed["usage"]["total_tokens"], 12);
    assert_eq!(parsed[0]["response"]["usage"], Value::Null);
    let plain = mock
        .post(
            "/v1/responses",
            &json!({"model": "gpt-4o", "input": "hello big world", "max_output_tokens": 3}),
        )
        .json();
    assert_eq!(plain["output"][0]["content"][0]["text"], deltas.as_str());
}

#[test]
fn models_list_and_get() {
    let mock = Mock::start_with(&["--models", "a-model,b-model"]);
    let list = mock.get("/v1/models").json();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-model", "b-model"]);
    for m in list["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert_eq!(m["owned_by"], "bursar-mock");
        assert!(m["created"].is_u64());
    }
    assert_eq!(mock.get("/v1/models/b-model").json()["id"], "b-model");
    assert_error_shape(&mock.get("/v1/models/nope"), 404, "invalid_request_error");

    let default = Mock::start();
    let list = default.get("/v1/models").json();
    assert_eq!(list["data"].as_array().unwrap().len(), 5);
    assert_eq!(list["data"][0]["id"], "gpt-4o-mini");
}

#[test]
fn bad_requests_get_openai_errors() {
    let mock = Mock::start();
    assert_error_shape(&mock.get("/v1/nothing"), 404, "invalid_request_error");
    let wrong_method = mock.get("/v1/chat/completions");
    assert_error_shape(&wrong_method, 405, "invalid_request_error");
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    assert_error_shape(
        &mock.request("POST", "/v1/models", &[], "{}"),
        405,
        "invalid_request_error",
    );
    let bad = |body: &str| mock.request("POST", "/v1/chat/completions", &[], body);
    for body in [
        "not json",
        "[1,2]",
        r#"{"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":5,"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"m"}"#,
        r#"{"model":"m","messages":"x"}"#,
        r#"{"model":"m","messages":[]}"#,
        r#"{"model":"m","messages":[1]}"#,
        r#"{"model":"m","messages":[{"content":5}]}"#,
        r#"{"model":"m","messages":[{"content":"x"}],"max_tokens":"5"}"#,
        r#"{"model":"m","messages":[{"content":"x"}],"max_tokens":-1}"#,
        r#"{"model":"m","messages":[{"content":"x"}],"max_tokens":1.5}"#,
        r#"{"model":"m","messages":[{"content":"x"}],"max_tokens":100001}"#,
        r#"{"model":"m","messages":[{"content":"x"}],"max_tokens":1e300}"#,
        r#"{"model":"m","messages":[{"content":"x"}],"max_tokens":99999999999999999999999}"#,
        r#"{"model":"m","messages":[{"content":"x"}],"stream":"yes"}"#,
        r#"{"model":"m","messages":[{"content":"x"}],"stream":true,"stream_options":1}"#,
    ] {
        assert_error_shape(&bad(body), 400, "invalid_request_error");
    }
    let emb = |body: &str| mock.request("POST", "/v1/embeddings", &[], body);
    for body in [
        r#"{"model":"m"}"#,
        r#"{"model":"m","input":[]}"#,
        r#"{"model":"m","input":[1.5]}"#,
        r#"{"model":"m","input":[{"a":1}]}"#,
        r#"{"model":"m","input":"x","dimensions":0}"#,
        r#"{"model":"m","input":"x","dimensions":1000000}"#,
        r#"{"model":"m","input":"x","encoding_format":"hex"}"#,
    ] {
        assert_error_shape(&emb(body), 400, "invalid_request_error");
    }
    for body in [
        r#"{"model":"m"}"#,
        r#"{"model":"m","input":5}"#,
        r#"{"model":"m","input":[5]}"#,
    ] {
        assert_error_shape(
            &mock.request("POST", "/v1/responses", &[], body),
            400,
            "invalid_request_error",
        );
    }
    assert_error_shape(
        &mock.request(
            "POST",
            "/v1/completions",
            &[],
            r#"{"model":"m","prompt":{"a":1}}"#,
        ),
        400,
        "invalid_request_error",
    );
    // A bad misbehaviour header is a 400 too.
    let resp = mock.post_with(
        "/v1/chat/completions",
        &[("x-mock-status", "200")],
        &chat_body(user("x"), json!({})),
    );
    assert_error_shape(&resp, 400, "invalid_request_error");
    // Over the body limit (declared; refused before the body is sent).
    let mut client = mock.client();
    client
        .reader
        .get_mut()
        .write_all(b"POST /v1/embeddings HTTP/1.1\r\nhost: mock\r\ncontent-length: 9000000\r\n\r\n")
        .unwrap();
    let (status, _) = client.read_head().unwrap();
    assert_eq!(status, 413);
    // Still serving.
    assert_eq!(mock.get("/health").status, 200);
}

// --------------------------------------------------------- misbehaviour

#[test]
fn injected_status() {
    let mock = Mock::start();
    for (status, kind) in [
        ("500", "server_error"),
        ("503", "server_error"),
        ("429", "requests"),
        ("401", "invalid_request_error"),
    ] {
        let resp = mock.post_with(
            "/v1/chat/completions",
            &[("x-mock-status", status)],
            &chat_body(user("x"), json!({})),
        );
        assert_error_shape(&resp, status.parse().unwrap(), kind);
    }
    let resp = mock.post_with(
        "/v1/embeddings",
        &[("x-mock-status", "502")],
        &json!({"model": "m", "input": "x"}),
    );
    assert_error_shape(&resp, 502, "server_error");
}

#[test]
fn delay_before_first_byte() {
    let mock = Mock::start_with(&["--delay-ms", "100"]);
    let start = Instant::now();
    let resp = mock.post_with(
        "/v1/chat/completions",
        &[("x-mock-delay-ms", "250")],
        &chat_body(user("x"), json!({})),
    );
    let elapsed = start.elapsed();
    assert_eq!(resp.status, 200);
    assert!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn stream_interval_paces_events() {
    let mock = Mock::start();
    let body = chat_body(user("x"), json!({"stream": true, "max_tokens": 5}));
    let resp = mock.post_with(
        "/v1/chat/completions",
        &[("x-mock-stream-interval-ms", "40")],
        &body,
    );
    assert!(resp.error.is_none());
    // 8 events, 7 pauses of 40 ms.
    assert_eq!(resp.chunks.len(), 8);
    let first = resp.chunk_times[0];
    let last = *resp.chunk_times.last().unwrap();
    assert!(first < Duration::from_millis(200), "{first:?}");
    assert!(
        last - first >= Duration::from_millis(250),
        "{:?}",
        last - first
    );

    let flag = Mock::start_with(&["--stream-interval-ms", "30"]);
    let resp = flag.post("/v1/chat/completions", &body);
    let spread = *resp.chunk_times.last().unwrap() - resp.chunk_times[0];
    assert!(spread >= Duration::from_millis(180), "{spread:?}");
}

#[test]
fn reset_after_k_chunks_mid_stream() {
    let mock = Mock::start();
    let body = chat_body(user("x"), json!({"stream": true, "max_tokens": 10}));
    let resp = mock.post_with(
        "/v1/chat/completions",
        &[("x-mock-reset-after", "3")],
        &body,
    );
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.error_kind(),
        Some(ErrorKind::ConnectionReset),
        "{:?}",
        resp.error
    );
    assert!(!resp.text().contains("[DONE]"));
    let chunks = resp.chunks_json();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(content_chunks(&chunks), 3);
    assert_eq!(chunks.len(), 4);

    // K beyond the content: cut before the finish chunk.
    let resp = mock.post_with(
        "/v1/chat/completions",
        &[("x-mock-reset-after", "100")],
        &body,
    );
    assert_eq!(resp.error_kind(), Some(ErrorKind::ConnectionReset));
    let chunks = resp.chunks_json();
    assert_eq!(content_chunks(&chunks), 10);
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));

    // Responses stream: K deltas, then the reset.
    let body = json!({"model": "m", "input": "x", "stream": true});
    let resp = mock.post_with("/v1/responses", &[("x-mock-reset-after", "2")], &body);
    assert_eq!(resp.error_kind(), Some(ErrorKind::ConnectionReset));
    let names: Vec<String> = resp.events().into_iter().filter_map(|(n, _)| n).collect();
    assert_eq!(names.len(), 6);
    assert_eq!(names[5], "response.output_text.delta");
}

#[test]
fn reset_non_streamed_before_any_byte() {
    let mock = Mock::start();
    let mut client = mock.client();
    let err = client
        .request(
            "POST",
            "/v1/chat/completions",
            &[("x-mock-reset-after", "0")],
            &chat_body(user("x"), json!({})).to_string(),
        )
        .expect_err("no response expected");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
}

#[test]
fn close_after_k_chunks_cuts_the_stream() {
    let mock = Mock::start();
    let body = chat_body(
        user("x"),
        json!({"stream": true, "max_tokens": 10, "stream_options": {"include_usage": true}}),
    );
    let resp = mock.post_with(
        "/v1/chat/completions",
        &[("x-mock-close-after", "2")],
        &body,
    );
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.error_kind(),
        Some(ErrorKind::UnexpectedEof),
        "{:?}",
        resp.error
    );
    assert!(!resp.text().contains("[DONE]"));
    let chunks = resp.chunks_json();
    assert_eq!(content_chunks(&chunks), 2);
    assert_eq!(chunks.len(), 3);

    // Non-streamed: closed without a response.
    let err = mock
        .client()
        .request(
            "POST",
            "/v1/chat/completions",
            &[("x-mock-close-after", "0")],
            &chat_body(user("x"), json!({})).to_string(),
        )
        .expect_err("no response expected");
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err:?}");
}

#[test]
fn omit_usage_everywhere() {
    let mock = Mock::start();
    let omit = [("x-mock-omit-usage", "1")];
    let plain = mock
        .post_with(
            "/v1/chat/completions",
            &omit,
            &chat_body(user("x"), json!({})),
        )
        .json();
    assert!(plain.get("usage").is_none());
    assert_eq!(
        words(plain["choices"][0]["message"]["content"].as_str().unwrap()),
        16
    );

    let body = chat_body(
        user("x"),
        json!({"stream": true, "max_tokens": 3, "stream_options": {"include_usage": true}}),
    );
    let resp = mock.post_with("/v1/chat/completions", &omit, &body);
    assert!(!resp.text().contains("usage"));
    // role + 3 + finish + [DONE], no usage chunk.
    assert_eq!(resp.data().len(), 6);

    let resp = mock.post_with("/v1/completions", &omit, &json!({"model": "m", "prompt": "x", "stream": true, "stream_options": {"include_usage": true}}));
    assert!(!resp.text().contains("usage"));
    assert!(mock
        .post_with(
            "/v1/completions",
            &omit,
            &json!({"model": "m", "prompt": "x"})
        )
        .json()
        .get("usage")
        .is_none());
    assert!(mock
        .post_with(
            "/v1/embeddings",
            &omit,
            &json!({"model": "m", "input": "x"})
        )
        .json()
        .get("usage")
        .is_none());
    assert!(mock
        .post_with("/v1/responses", &omit, &json!({"model": "m", "input": "x"}))
        .json()
        .get("usage")
        .is_none());
    let resp = mock.post_with(
        "/v1/responses",
        &omit,
        &json!({"model": "m", "input": "x", "stream": true}),
    );
    assert!(!resp.text().contains("usage"));
    assert_eq!(
        resp.events().last().unwrap().0.as_deref(),
        Some("response.completed")
    );
}

#[test]
fn split_byte_writes_one_byte_per_chunk() {
    let mock = Mock::start();
    let body = chat_body(
        user("x"),
        json!({"stream": true, "max_tokens": 4, "stream_options": {"include_usage": true}}),
    );
    let normal = mock.post("/v1/chat/completions", &body);
    let split = mock.post_with("/v1/chat/completions", &[("x-mock-split", "byte")], &body);
    assert!(split.error.is_none());
    assert!(split.chunks.iter().all(|&n| n == 1));
    assert_eq!(split.chunks.len(), split.body.len());
    // Same events (`created` may tick between the two requests).
    let strip = |r: &Resp| {
        let mut chunks = r.chunks_json();
        for c in &mut chunks {
            c.as_object_mut().unwrap().remove("created");
        }
        chunks
    };
    assert_eq!(strip(&split), strip(&normal));
    assert_eq!(split.data().last().unwrap(), "[DONE]");

    // Non-streamed: still Content-Length, written byte by byte.
    let plain = mock.post_with(
        "/v1/embeddings",
        &[("x-mock-split", "byte")],
        &json!({"model": "m", "input": "x"}),
    );
    assert!(plain.header("content-length").is_some());
    assert_eq!(plain.json()["usage"]["prompt_tokens"], 1);
}

#[test]
fn cached_and_reasoning_tokens() {
    let mock = Mock::start();
    let headers = [
        ("x-mock-cached-tokens", "5"),
        ("x-mock-reasoning-tokens", "7"),
    ];
    // prompt: 3 + 8 + 3 = 14
    let body = chat_body(user("a b c d e f g h"), json!({"max_tokens": 4}));
    let v = mock
        .post_with("/v1/chat/completions", &headers, &body)
        .json();
    assert_eq!(v["usage"]["prompt_tokens"], 14);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 4 + 7);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        7
    );
    assert_eq!(v["usage"]["total_tokens"], 14 + 11);
    assert_eq!(
        words(v["choices"][0]["message"]["content"].as_str().unwrap()),
        4
    );

    let capped = mock
        .post_with(
            "/v1/chat/completions",
            &[("x-mock-cached-tokens", "1000")],
            &body,
        )
        .json();
    assert_eq!(
        capped["usage"]["prompt_tokens_details"]["cached_tokens"],
        14
    );

    let r = mock
        .post_with(
            "/v1/responses",
            &headers,
            &json!({"model": "m", "input": "a b", "max_output_tokens": 2}),
        )
        .json();
    assert_eq!(r["usage"]["input_tokens"], 8);
    assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 5);
    assert_eq!(r["usage"]["output_tokens"], 9);
    assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 7);
    assert_eq!(r["usage"]["total_tokens"], 17);

    let c = mock
        .post_with(
            "/v1/completions",
            &headers,
            &json!({"model": "m", "prompt": "a b c d e f", "max_tokens": 1}),
        )
        .json();
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
    assert_eq!(c["usage"]["completion_tokens"], 8);

    let s = mock.post_with(
        "/v1/chat/completions",
        &headers,
        &chat_body(
            user("a b c d e f g h"),
            json!({"max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}),
        ),
    );
    let chunks = s.chunks_json();
    assert_eq!(chunks.last().unwrap()["usage"], v["usage"]);
}

// ------------------------------------------------------------ transport

#[test]
fn keep_alive_100_requests_on_one_connection() {
    let mock = Mock::start();
    let mut client = mock.client();
    for i in 0..100 {
        let resp = match i % 4 {
            0 => client.request("GET", "/v1/models", &[], ""),
            1 => client.request(
                "POST",
                "/v1/chat/completions",
                &[],
                &chat_body(user("hi"), json!({"max_tokens": 2})).to_string(),
            ),
            2 => client.request(
                "POST",
                "/v1/chat/completions",
                &[],
                &chat_body(user("hi"), json!({"max_tokens": 2, "stream": true})).to_string(),
            ),
            _ => client.request(
                "POST",
                "/v1/embeddings",
                &[],
                r#"{"model":"m","input":"x"}"#,
            ),
        }
        .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status, 200, "request {i}");
        assert!(resp.error.is_none(), "request {i}: {:?}", resp.error);
        assert_ne!(resp.header("connection"), Some("close"));
    }
    // An error response keeps the connection too.
    let resp = client.request("GET", "/nope", &[], "").unwrap();
    assert_eq!(resp.status, 404);
    assert_eq!(
        client.request("GET", "/health", &[], "").unwrap().status,
        200
    );
}

#[test]
fn last_request_shows_what_was_forwarded() {
    let mock = Mock::start();
    assert_eq!(mock.get("/v1/_mock/last-request").status, 404);
    let body = chat_body(user("secret question"), json!({"max_tokens": 1}));
    mock.post_with(
        "/v1/chat/completions?trace=1",
        &[("Authorization", "Bearer sk-provider"), ("X-Custom", "abc")],
        &body,
    );
    mock.get("/health"); // not recorded
    let last = mock.get("/v1/_mock/last-request").json();
    assert_eq!(last["method"], "POST");
    assert_eq!(last["path"], "/v1/chat/completions");
    assert_eq!(last["query"], "trace=1");
    assert_eq!(last["headers"]["authorization"], "Bearer sk-provider");
    assert_eq!(last["headers"]["x-custom"], "abc");
    assert_eq!(last["body"], body);
    assert_eq!(last["body_bytes"], body.to_string().len());
}

#[test]
fn exits_cleanly_on_sigterm() {
    let mut mock = Mock::start();
    assert_eq!(mock.get("/health").status, 200);
    let status = Command::new("kill")
        .args(["-TERM", &mock.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(exit) = mock.child.try_wait().unwrap() {
            assert!(exit.success(), "{exit:?}");
            break;
        }
        assert!(Instant::now() < deadline, "mock did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------- Anthropic, Gemini, Bedrock

const ANTHROPIC: &[(&str, &str)] = &[("x-api-key", "sk-ant"), ("anthropic-version", "2023-06-01")];

/// `headers` after the Anthropic auth headers.
fn with_anthropic<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = ANTHROPIC.to_vec();
    all.extend_from_slice(extra);
    all
}

fn anthropic_body(extra: Value) -> Value {
    let mut body = json!({
        "model": "claude-3-5-sonnet-latest",
        "max_tokens": 5,
        "system": "be brief",
        "messages": [
            {"role": "user", "content": "a b c"},
            {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
            {"role": "user", "content": [{"type": "text", "text": "e f"}, {"type": "image", "source": {}}]},
        ],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Prompt of `anthropic_body`: system (3+2) + (3+3) + (3+1) + (3+2) + 3.
const ANTHROPIC_PROMPT: u64 = 5 + 6 + 4 + 5 + 3;

fn assert_anthropic_error(resp: &Resp, status: u16, kind: &str) {
    assert_eq!(resp.status, status, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
}

/// The (event name, JSON data) pairs of an Anthropic stream; every event has both lines.
fn named_events(resp: &Resp) -> Vec<(String, Value)> {
    resp.events()
        .into_iter()
        .map(|(name, data)| {
            let name = name.expect("every event is named");
            let data: Value = serde_json::from_str(&data).unwrap();
            (name, data)
        })
        .collect()
}

#[test]
fn anthropic_auth_validation_and_errors() {
    let mock = Mock::start();
    let body = anthropic_body(json!({}));
    let resp = mock.post_with(
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        &body,
    );
    assert_anthropic_error(&resp, 401, "authentication_error");
    let resp = mock.post_with("/v1/messages", &[("x-api-key", "k")], &body);
    assert_anthropic_error(&resp, 400, "invalid_request_error");
    assert!(resp.text().contains("anthropic-version"));

    let mut no_max = body.clone();
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let resp = mock.post_with("/v1/messages", ANTHROPIC, &no_max);
    assert_anthropic_error(&resp, 400, "invalid_request_error");
    assert!(resp.text().contains("max_tokens"));
    for bad in [
        json!({"messages": []}),
        json!({"messages": [{"role": "system", "content": "x"}]}),
        json!({"model": null}),
        json!({"max_tokens": 0}),
    ] {
        let resp = mock.post_with("/v1/messages", ANTHROPIC, &anthropic_body(bad.clone()));
        assert_anthropic_error(&resp, 400, "invalid_request_error");
    }
    for (status, kind) in [
        ("429", "rate_limit_error"),
        ("500", "api_error"),
        ("529", "overloaded_error"),
        ("401", "authentication_error"),
    ] {
        let resp = mock.post_with(
            "/v1/messages",
            &with_anthropic(&[("x-mock-status", status)]),
            &body,
        );
        assert_anthropic_error(&resp, status.parse().unwrap(), kind);
    }
    // A bad misbehaviour header is refused in Anthropic's shape too.
    let resp = mock.post_with(
        "/v1/messages",
        &with_anthropic(&[("x-mock-stream-error-after", "x")]),
        &body,
    );
    assert_anthropic_error(&resp, 400, "invalid_request_error");
}

#[test]
fn anthropic_plain_message_and_usage() {
    let mock = Mock::start();
    let v = mock
        .post_with("/v1/messages", ANTHROPIC, &anthropic_body(json!({})))
        .json();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"), "{v}");
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-3-5-sonnet-latest");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(words(v["content"][0]["text"].as_str().unwrap()), 5);
    assert_eq!(v["stop_reason"], "max_tokens");
    assert!(v["stop_sequence"].is_null());
    assert_eq!(
        v["usage"],
        json!({"input_tokens": ANTHROPIC_PROMPT, "cache_creation_input_tokens": 0,
               "cache_read_input_tokens": 0, "output_tokens": 5})
    );

    // Fewer words than the cap: end_turn. Cache headers move prompt tokens.
    let v = mock
        .post_with(
            "/v1/messages",
            &with_anthropic(&[
                ("x-mock-completion-tokens", "3"),
                ("x-mock-cache-read-tokens", "10"),
                ("x-mock-cache-write-tokens", "100"),
                ("x-mock-reasoning-tokens", "4"),
            ]),
            &anthropic_body(json!({})),
        )
        .json();
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(words(v["content"][0]["text"].as_str().unwrap()), 3);
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 0, "cache_creation_input_tokens": ANTHROPIC_PROMPT - 10,
               "cache_read_input_tokens": 10, "output_tokens": 7})
    );

    let v = mock
        .post_with(
            "/v1/messages",
            &with_anthropic(&[("x-mock-omit-usage", "1")]),
            &anthropic_body(json!({})),
        )
        .json();
    assert!(v.get("usage").is_none(), "{v}");
}

#[test]
fn anthropic_stream_events() {
    let mock = Mock::start();
    let plain = mock
        .post_with("/v1/messages", ANTHROPIC, &anthropic_body(json!({})))
        .json();
    let resp = mock.post_with(
        "/v1/messages",
        &with_anthropic(&[("x-mock-cache-read-tokens", "2")]),
        &anthropic_body(json!({"stream": true})),
    );
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = named_events(&resp);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    let start = &events[0].1["message"];
    assert_eq!(start["content"], json!([]));
    assert!(start["stop_reason"].is_null());
    assert_eq!(start["usage"]["input_tokens"], ANTHROPIC_PROMPT - 2);
    assert_eq!(start["usage"]["cache_read_input_tokens"], 2);
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, plain["content"][0]["text"].as_str().unwrap());
    assert_eq!(
        events[9].1,
        json!({"type": "message_delta",
               "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
               "usage": {"output_tokens": 5}})
    );

    // omit-usage: message_delta has none, message_start keeps the input counts.
    let resp = mock.post_with(
        "/v1/messages",
        &with_anthropic(&[("x-mock-omit-usage", "1")]),
        &anthropic_body(json!({"stream": true})),
    );
    let events = named_events(&resp);
    assert_eq!(
        events[0].1["message"]["usage"]["input_tokens"],
        ANTHROPIC_PROMPT
    );
    let delta = &events.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert!(delta.get("usage").is_none(), "{delta}");

    // An in-stream error after 2 deltas, then the stream ends cleanly.
    let resp = mock.post_with(
        "/v1/messages",
        &with_anthropic(&[("x-mock-stream-error-after", "2")]),
        &anthropic_body(json!({"stream": true})),
    );
    assert!(resp.error.is_none());
    let events = named_events(&resp);
    assert_eq!(events.len(), 6);
    assert_eq!(events[5].0, "error");
    assert_eq!(
        events[5].1["error"]["type"], "overloaded_error",
        "{}",
        events[5].1
    );
}

#[test]
fn anthropic_tool_use() {
    let mock = Mock::start();
    let tools = json!({"tools": [
        {"name": "get_weather", "description": "w", "input_schema": {"type": "object"}},
        {"name": "get_time", "input_schema": {"type": "object"}},
    ]});
    let header = with_anthropic(&[("x-mock-tool-call", "get_time")]);
    let v = mock
        .post_with("/v1/messages", &header, &anthropic_body(tools.clone()))
        .json();
    assert_eq!(v["stop_reason"], "tool_use");
    let block = &v["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "get_time");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(words(block["input"]["text"].as_str().unwrap()), 5);
    assert_eq!(v["usage"]["output_tokens"], 5);

    // tool_choice forces a tool without the header.
    let mut forced = anthropic_body(tools.clone());
    forced["tool_choice"] = json!({"type": "tool", "name": "get_weather"});
    let v = mock.post_with("/v1/messages", ANTHROPIC, &forced).json();
    assert_eq!(v["content"][0]["name"], "get_weather");
    forced["tool_choice"] = json!({"type": "auto"});
    let v = mock.post_with("/v1/messages", ANTHROPIC, &forced).json();
    assert_eq!(v["content"][0]["type"], "text");

    // Streamed: input_json_delta pieces that join to the same input.
    let mut streamed = anthropic_body(tools.clone());
    streamed["stream"] = json!(true);
    let plain = mock
        .post_with("/v1/messages", &header, &anthropic_body(tools.clone()))
        .json();
    let events = named_events(&mock.post_with("/v1/messages", &header, &streamed));
    assert_eq!(events[1].1["content_block"]["type"], "tool_use");
    assert_eq!(events[1].1["content_block"]["input"], json!({}));
    let pieces: Vec<String> = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(pieces.len() >= 2);
    let input: Value = serde_json::from_str(&pieces.concat()).unwrap();
    assert_eq!(input, plain["content"][0]["input"]);
    let delta = &events.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");

    // Naming a tool the request does not declare is refused.
    let resp = mock.post_with(
        "/v1/messages",
        &with_anthropic(&[("x-mock-tool-call", "nope")]),
        &anthropic_body(tools),
    );
    assert_anthropic_error(&resp, 400, "invalid_request_error");
}

// ------------------------------------------------------------- Gemini

fn gemini_body(extra: Value) -> Value {
    let mut body = json!({
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "a b c"}]},
            {"role": "model", "parts": [{"text": "d"}]},
            {"role": "user", "parts": [{"text": "e"}, {"inlineData": {}}, {"text": "f"}]},
        ],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Prompt of `gemini_body`: system (3+2) + (3+3) + (3+1) + (3+2) + 3.
const GEMINI_PROMPT: u64 = 5 + 6 + 4 + 5 + 3;
const GEMINI_KEY: &[(&str, &str)] = &[("x-goog-api-key", "AIza-test")];
const GEMINI_PLAIN: &str = "/v1beta/models/gemini-2.0-flash:generateContent";
const GEMINI_SSE: &str = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse";

fn assert_gemini_error(resp: &Resp, status: u16, code: &str) {
    assert_eq!(resp.status, status, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["error"]["code"], status, "{v}");
    assert_eq!(v["error"]["status"], code, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
}

#[test]
fn gemini_auth_and_errors() {
    let mock = Mock::start();
    let body = gemini_body(json!({}));
    assert_gemini_error(&mock.post(GEMINI_PLAIN, &body), 403, "PERMISSION_DENIED");
    let by_query = mock.post(&format!("{GEMINI_PLAIN}?key=AIza"), &body);
    assert_eq!(by_query.status, 200);
    assert_eq!(mock.post_with(GEMINI_PLAIN, GEMINI_KEY, &body).status, 200);
    let resp = mock.post_with(GEMINI_PLAIN, GEMINI_KEY, &json!({"contents": []}));
    assert_gemini_error(&resp, 400, "INVALID_ARGUMENT");
    let resp = mock.post_with(
        GEMINI_PLAIN,
        GEMINI_KEY,
        &json!({"contents": [{"role": "bot", "parts": [{"text": "x"}]}]}),
    );
    assert_gemini_error(&resp, 400, "INVALID_ARGUMENT");
    for (status, code) in [
        ("429", "RESOURCE_EXHAUSTED"),
        ("500", "INTERNAL"),
        ("503", "UNAVAILABLE"),
    ] {
        let resp = mock.post_with(
            GEMINI_PLAIN,
            &[("x-goog-api-key", "k"), ("x-mock-status", status)],
            &body,
        );
        assert_gemini_error(&resp, status.parse().unwrap(), code);
    }
    assert_eq!(
        mock.post_with(
            "/v1beta/models/gemini-2.0-flash:countTokens",
            GEMINI_KEY,
            &body
        )
        .status,
        404
    );
}

#[test]
fn gemini_plain_usage() {
    let mock = Mock::start();
    let v = mock
        .post_with(GEMINI_PLAIN, GEMINI_KEY, &gemini_body(json!({})))
        .json();
    let candidate = &v["candidates"][0];
    assert_eq!(candidate["content"]["role"], "model");
    assert_eq!(
        words(candidate["content"]["parts"][0]["text"].as_str().unwrap()),
        16
    );
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(candidate["index"], 0);
    assert_eq!(
        v["usageMetadata"],
        json!({"promptTokenCount": GEMINI_PROMPT, "candidatesTokenCount": 16,
               "totalTokenCount": GEMINI_PROMPT + 16})
    );
    assert_eq!(v["modelVersion"], "gemini-2.0-flash");
    assert!(v["responseId"].is_string());

    let v = mock
        .post_with(
            GEMINI_PLAIN,
            &[
                ("x-goog-api-key", "k"),
                ("x-mock-reasoning-tokens", "7"),
                ("x-mock-cached-tokens", "4"),
            ],
            &gemini_body(json!({"generationConfig": {"maxOutputTokens": 3}})),
        )
        .json();
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(
        v["usageMetadata"],
        json!({"promptTokenCount": GEMINI_PROMPT, "candidatesTokenCount": 3,
               "thoughtsTokenCount": 7, "cachedContentTokenCount": 4,
               "totalTokenCount": GEMINI_PROMPT + 3 + 7})
    );
    let v = mock
        .post_with(
            GEMINI_PLAIN,
            &[("x-goog-api-key", "k"), ("x-mock-omit-usage", "1")],
            &gemini_body(json!({})),
        )
        .json();
    assert!(v.get("usageMetadata").is_none());
}

#[test]
fn gemini_streams_sse_and_array() {
    let mock = Mock::start();
    let body = gemini_body(json!({"generationConfig": {"maxOutputTokens": 4}}));
    let plain = mock.post_with(GEMINI_PLAIN, GEMINI_KEY, &body).json();
    let resp = mock.post_with(
        GEMINI_SSE,
        &[("x-goog-api-key", "k"), ("x-mock-reasoning-tokens", "2")],
        &body,
    );
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let chunks: Vec<Value> = resp
        .events()
        .into_iter()
        .map(|(name, d)| {
            assert!(name.is_none());
            serde_json::from_str(&d).unwrap()
        })
        .collect();
    assert_eq!(chunks.len(), 5);
    let mut text = String::new();
    for (i, c) in chunks.iter().enumerate() {
        text.push_str(
            c["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap(),
        );
        let usage = &c["usageMetadata"];
        assert_eq!(usage["promptTokenCount"], GEMINI_PROMPT);
        if i < 4 {
            assert!(c["candidates"][0].get("finishReason").is_none());
            assert_eq!(usage["candidatesTokenCount"], i + 1);
        }
    }
    assert_eq!(
        text,
        plain["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap()
    );
    let last = &chunks[4];
    assert_eq!(last["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(
        last["usageMetadata"],
        json!({"promptTokenCount": GEMINI_PROMPT, "candidatesTokenCount": 4,
               "thoughtsTokenCount": 2, "totalTokenCount": GEMINI_PROMPT + 6})
    );

    // Without alt=sse: one JSON array of the same chunks.
    let resp = mock.post_with(
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        GEMINI_KEY,
        &body,
    );
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let array = resp.json();
    assert_eq!(array.as_array().unwrap().len(), 5);
    assert_eq!(array[4]["candidates"][0]["finishReason"], "MAX_TOKENS");

    // In-stream error after 2 chunks.
    let resp = mock.post_with(
        GEMINI_SSE,
        &[("x-goog-api-key", "k"), ("x-mock-stream-error-after", "2")],
        &body,
    );
    let data = resp.data();
    assert_eq!(data.len(), 3);
    let err: Value = serde_json::from_str(&data[2]).unwrap();
    assert_eq!(err["error"]["status"], "UNAVAILABLE");
    assert_eq!(err["error"]["code"], 503);

    // reset-after on a Gemini stream.
    let resp = mock.post_with(
        GEMINI_SSE,
        &[("x-goog-api-key", "k"), ("x-mock-reset-after", "1")],
        &body,
    );
    assert_eq!(resp.error_kind(), Some(ErrorKind::ConnectionReset));
    assert_eq!(resp.data().len(), 1);
}

#[test]
fn gemini_function_call() {
    let mock = Mock::start();
    let tools = json!({"tools": [{"functionDeclarations": [
        {"name": "lookup", "parameters": {"type": "object"}},
        {"name": "other"},
    ]}]});
    let v = mock
        .post_with(
            GEMINI_PLAIN,
            &[("x-goog-api-key", "k"), ("x-mock-tool-call", "other")],
            &gemini_body(tools.clone()),
        )
        .json();
    let call = &v["candidates"][0]["content"]["parts"][0]["functionCall"];
    assert_eq!(call["name"], "other");
    assert_eq!(words(call["args"]["text"].as_str().unwrap()), 16);
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");

    let mut forced = gemini_body(tools);
    forced["toolConfig"] = json!({"functionCallingConfig": {"mode": "ANY"}});
    let resp = mock.post_with(GEMINI_SSE, GEMINI_KEY, &forced);
    let chunks: Vec<Value> = resp
        .data()
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks.len(), 2);
    assert_eq!(
        chunks[0]["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
        "lookup"
    );
}

// ------------------------------------------------------------ Bedrock

/// The test's own SigV4 signer (written apart from the mock's).
mod sign {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    fn hmac(key: &[u8], data: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The Authorization header for a request signing `headers` (sorted,
    /// lowercase, already trimmed) with `canonical_uri` given ready-made.
    #[allow(clippy::too_many_arguments)]
    pub fn authorization(
        method: &str,
        canonical_uri: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        amz_date: &str,
        region: &str,
        service: &str,
        secret: &str,
    ) -> String {
        let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
        let signed: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
        let signed = signed.join(";");
        let creq = format!(
            "{method}\n{canonical_uri}\n{query}\n{canonical_headers}\n{signed}\n{}",
            hex(&Sha256::digest(body))
        );
        let date = &amz_date[..8];
        let scope = format!("{date}/{region}/{service}/aws4_request");
        let sts = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(creq.as_bytes()))
        );
        let mut key = hmac(format!("AWS4{secret}").as_bytes(), date);
        for part in [region, service, "aws4_request"] {
            key = hmac(&key, part);
        }
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{scope}, SignedHeaders={signed}, Signature={}",
            hex(&hmac(&key, &sts))
        )
    }
}

const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const AMZ_DATE: &str = "20240101T000000Z";
const BEDROCK_PATH: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
const BEDROCK_CANONICAL: &str = "/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse";

/// Headers that pass the form check (the signature is not verified without
/// `--aws-secret-access-key`).
fn bedrock_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("x-amz-date", AMZ_DATE),
        ("authorization", "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
    ];
    h.extend_from_slice(extra);
    h
}

fn bedrock_body(extra: Value) -> Value {
    let mut body = json!({
        "system": [{"text": "be brief"}],
        "messages": [
            {"role": "user", "content": [{"text": "a b c"}]},
            {"role": "assistant", "content": [{"text": "d"}]},
            {"role": "user", "content": [{"text": "e f"}]},
        ],
        "inferenceConfig": {"maxTokens": 6},
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Prompt of `bedrock_body`: system (3+2) + (3+3) + (3+1) + (3+2) + 3.
const BEDROCK_PROMPT: u64 = 5 + 6 + 4 + 5 + 3;

/// CRC-32 (IEEE), bit by bit: independent of the mock's `crc32fast`.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One decoded event-stream message: its string headers and JSON payload.
#[derive(Debug)]
struct Frame {
    headers: Vec<(String, String)>,
    payload: Value,
}

impl Frame {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no header {name} in {self:?}"))
    }
}

/// Decodes every complete message, checking both CRCs and the lengths.
fn decode_frames(mut bytes: &[u8]) -> Vec<Frame> {
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let mut frames = Vec::new();
    while bytes.len() >= 12 {
        let total = be32(&bytes[0..4]) as usize;
        let headers_len = be32(&bytes[4..8]) as usize;
        assert_eq!(be32(&bytes[8..12]), crc32(&bytes[0..8]), "prelude CRC");
        if bytes.len() < total {
            break; // a cut stream: the rest is incomplete
        }
        let msg = &bytes[..total];
        assert_eq!(
            be32(&msg[total - 4..]),
            crc32(&msg[..total - 4]),
            "message CRC"
        );
        let mut h = &msg[12..12 + headers_len];
        let mut headers = Vec::new();
        while !h.is_empty() {
            let name_len = h[0] as usize;
            let name = std::str::from_utf8(&h[1..1 + name_len]).unwrap().to_owned();
            assert_eq!(h[1 + name_len], 7, "string header");
            let value_len = u16::from_be_bytes([h[2 + name_len], h[3 + name_len]]) as usize;
            let start = 4 + name_len;
            let value = std::str::from_utf8(&h[start..start + value_len])
                .unwrap()
                .to_owned();
            headers.push((name, value));
            h = &h[start + value_len..];
        }
        let payload = serde_json::from_slice(&msg[12 + headers_len..total - 4]).unwrap();
        frames.push(Frame { headers, payload });
        bytes = &bytes[total..];
    }
    frames
}

#[test]
fn test_signer_matches_aws_get_vanilla() {
    // AWS SigV4 test suite, get-vanilla.
    let auth = sign::authorization(
        "GET",
        "/",
        "",
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ],
        b"",
        "20150830T123600Z",
        "us-east-1",
        "service",
        AWS_SECRET,
    );
    assert!(auth
        .ends_with("Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"));
}

#[test]
fn bedrock_auth_refusals_and_signature_check() {
    let mock = Mock::start_with(&["--aws-secret-access-key", AWS_SECRET]);
    let body = bedrock_body(json!({}));
    let text = body.to_string();
    let refused = |resp: &Resp, kind: &str| {
        assert_eq!(resp.status, 403, "{}", resp.text());
        assert_eq!(resp.header("x-amzn-errortype"), Some(kind));
        assert!(resp.json()["message"].is_string());
    };
    let resp = mock.post(BEDROCK_PATH, &body);
    refused(&resp, "MissingAuthenticationTokenException");
    assert_eq!(
        resp.json(),
        json!({"message": "Missing Authentication Token"})
    );
    refused(
        &mock.post_with(BEDROCK_PATH, &[("authorization", "Bearer x")], &body),
        "MissingAuthenticationTokenException",
    );
    refused(
        &mock.post_with(
            BEDROCK_PATH,
            &[
                ("authorization", "AWS4-HMAC-SHA256 Signature=ab"),
                ("x-amz-date", AMZ_DATE),
            ],
            &body,
        ),
        "IncompleteSignatureException",
    );
    // No x-amz-date.
    let headers = bedrock_headers(&[]);
    refused(
        &mock.post_with(BEDROCK_PATH, &headers[1..], &body),
        "IncompleteSignatureException",
    );

    // A correct signature over host, x-amz-date and content-type.
    let sign_with = |secret: &str, service: &str| {
        sign::authorization(
            "POST",
            BEDROCK_CANONICAL,
            "",
            &[
                ("content-type", "application/json"),
                ("host", "mock"),
                ("x-amz-date", AMZ_DATE),
            ],
            text.as_bytes(),
            AMZ_DATE,
            "us-east-1",
            service,
            secret,
        )
    };
    let good = sign_with(AWS_SECRET, "bedrock");
    let resp = mock.request(
        "POST",
        BEDROCK_PATH,
        &[("x-amz-date", AMZ_DATE), ("authorization", &good)],
        &text,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let last = mock.get("/v1/_mock/last-request").json();
    assert_eq!(last["headers"]["authorization"], good.as_str());
    assert_eq!(last["path"], BEDROCK_PATH);

    let bad = sign_with("another secret", "bedrock");
    refused(
        &mock.request(
            "POST",
            BEDROCK_PATH,
            &[("x-amz-date", AMZ_DATE), ("authorization", &bad)],
            &text,
        ),
        "InvalidSignatureException",
    );
    // The right signature over a changed body does not verify either.
    refused(
        &mock.request(
            "POST",
            BEDROCK_PATH,
            &[("x-amz-date", AMZ_DATE), ("authorization", &good)],
            &text.replace("a b c", "a b x"),
        ),
        "InvalidSignatureException",
    );
    let wrong_service = sign_with(AWS_SECRET, "s3");
    refused(
        &mock.request(
            "POST",
            BEDROCK_PATH,
            &[("x-amz-date", AMZ_DATE), ("authorization", &wrong_service)],
            &text,
        ),
        "InvalidSignatureException",
    );
}

#[test]
fn bedrock_converse_plain() {
    let mock = Mock::start();
    let resp = mock.post_with(
        BEDROCK_PATH,
        &bedrock_headers(&[]),
        &bedrock_body(json!({})),
    );
    let v = resp.json();
    assert_eq!(v["output"]["message"]["role"], "assistant");
    assert_eq!(
        words(
            v["output"]["message"]["content"][0]["text"]
                .as_str()
                .unwrap()
        ),
        6
    );
    assert_eq!(v["stopReason"], "max_tokens");
    assert_eq!(
        v["usage"],
        json!({"inputTokens": BEDROCK_PROMPT, "outputTokens": 6, "totalTokens": BEDROCK_PROMPT + 6})
    );
    assert!(v["metrics"]["latencyMs"].is_u64());

    let v = mock
        .post_with(
            BEDROCK_PATH,
            &bedrock_headers(&[
                ("x-mock-completion-tokens", "2"),
                ("x-mock-cache-read-tokens", "5"),
                ("x-mock-cache-write-tokens", "3"),
            ]),
            &bedrock_body(json!({})),
        )
        .json();
    assert_eq!(v["stopReason"], "end_turn");
    assert_eq!(
        v["usage"],
        json!({"inputTokens": BEDROCK_PROMPT - 8, "outputTokens": 2,
               "totalTokens": BEDROCK_PROMPT + 2,
               "cacheReadInputTokens": 5, "cacheWriteInputTokens": 3})
    );

    // Tool use.
    let tools = json!({"toolConfig": {"tools": [{"toolSpec": {"name": "calc", "inputSchema": {"json": {}}}}],
                                      "toolChoice": {"any": {}}}});
    let v = mock
        .post_with(BEDROCK_PATH, &bedrock_headers(&[]), &bedrock_body(tools))
        .json();
    assert_eq!(v["stopReason"], "tool_use");
    let tool = &v["output"]["message"]["content"][0]["toolUse"];
    assert_eq!(tool["name"], "calc");
    assert!(tool["toolUseId"].is_string());
    assert_eq!(words(tool["input"]["text"].as_str().unwrap()), 6);

    // Validation and injected errors in Bedrock's shape.
    let resp = mock.post_with(
        BEDROCK_PATH,
        &bedrock_headers(&[]),
        &json!({"messages": []}),
    );
    assert_eq!(resp.status, 400);
    assert_eq!(resp.header("x-amzn-errortype"), Some("ValidationException"));
    for (status, kind) in [
        ("429", "ThrottlingException"),
        ("500", "InternalServerException"),
        ("503", "ServiceUnavailableException"),
    ] {
        let resp = mock.post_with(
            BEDROCK_PATH,
            &bedrock_headers(&[("x-mock-status", status)]),
            &bedrock_body(json!({})),
        );
        assert_eq!(resp.status.to_string(), status);
        assert_eq!(resp.header("x-amzn-errortype"), Some(kind));
        assert!(resp.json()["message"].is_string());
    }
}

#[test]
fn bedrock_converse_stream_frames() {
    let mock = Mock::start();
    let path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream";
    let plain = mock
        .post_with(
            BEDROCK_PATH,
            &bedrock_headers(&[]),
            &bedrock_body(json!({})),
        )
        .json();
    let resp = mock.post_with(path, &bedrock_headers(&[]), &bedrock_body(json!({})));
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/vnd.amazon.eventstream")
    );
    let frames = decode_frames(&resp.body);
    let types: Vec<&str> = frames.iter().map(|f| f.header(":event-type")).collect();
    assert_eq!(
        types,
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    for f in &frames {
        assert_eq!(f.header(":message-type"), "event");
        assert_eq!(f.header(":content-type"), "application/json");
    }
    assert_eq!(frames[0].payload, json!({"role": "assistant"}));
    let text: String = frames[1..7]
        .iter()
        .map(|f| f.payload["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        text,
        plain["output"]["message"]["content"][0]["text"]
            .as_str()
            .unwrap()
    );
    assert_eq!(frames[8].payload, json!({"stopReason": "max_tokens"}));
    assert_eq!(frames[9].payload["usage"], plain["usage"]);
    assert!(frames[9].payload["metrics"]["latencyMs"].is_u64());

    // Tool use: contentBlockStart, then the input in pieces.
    let tools = json!({"toolConfig": {"tools": [{"toolSpec": {"name": "calc"}}]}});
    let resp = mock.post_with(
        path,
        &bedrock_headers(&[
            ("x-mock-tool-call", "calc"),
            ("x-mock-completion-tokens", "2"),
        ]),
        &bedrock_body(tools),
    );
    let frames = decode_frames(&resp.body);
    assert_eq!(frames[1].header(":event-type"), "contentBlockStart");
    assert_eq!(frames[1].payload["start"]["toolUse"]["name"], "calc");
    let input: String = frames
        .iter()
        .filter(|f| f.header(":event-type") == "contentBlockDelta")
        .map(|f| {
            f.payload["delta"]["toolUse"]["input"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let input: Value = serde_json::from_str(&input).unwrap();
    assert_eq!(words(input["text"].as_str().unwrap()), 2);
    assert_eq!(frames[frames.len() - 2].payload["stopReason"], "tool_use");

    // An exception after 3 deltas.
    let resp = mock.post_with(
        path,
        &bedrock_headers(&[("x-mock-stream-error-after", "3")]),
        &bedrock_body(json!({})),
    );
    let frames = decode_frames(&resp.body);
    assert_eq!(frames.len(), 5);
    let last = &frames[4];
    assert_eq!(last.header(":message-type"), "exception");
    assert_eq!(last.header(":exception-type"), "throttlingException");
    assert!(last.payload["message"].is_string());

    // omit-usage: metadata without usage.
    let resp = mock.post_with(
        path,
        &bedrock_headers(&[("x-mock-omit-usage", "1")]),
        &bedrock_body(json!({})),
    );
    let frames = decode_frames(&resp.body);
    assert!(frames.last().unwrap().payload.get("usage").is_none());

    // close-after: the frames before the cut are whole, then EOF.
    let resp = mock.post_with(
        path,
        &bedrock_headers(&[("x-mock-close-after", "2")]),
        &bedrock_body(json!({})),
    );
    assert_eq!(resp.error_kind(), Some(ErrorKind::UnexpectedEof));
    assert_eq!(decode_frames(&resp.body).len(), 3);

    // split byte: one byte per chunk, same frames.
    let resp = mock.post_with(
        path,
        &bedrock_headers(&[("x-mock-split", "byte")]),
        &bedrock_body(json!({})),
    );
    assert!(resp.chunks.iter().all(|&n| n == 1));
    assert_eq!(decode_frames(&resp.body).len(), 10);
}

#[test]
fn native_formats_misbehave_and_are_recorded() {
    let mock = Mock::start();
    // split byte on an Anthropic stream: same events.
    let body = anthropic_body(json!({"stream": true}));
    let normal = mock.post_with("/v1/messages", ANTHROPIC, &body);
    let split = mock.post_with(
        "/v1/messages",
        &with_anthropic(&[("x-mock-split", "byte")]),
        &body,
    );
    assert!(split.chunks.iter().all(|&n| n == 1));
    assert_eq!(split.body, normal.body);
    // Non-streamed, split: still Content-Length.
    let split = mock.post_with(
        "/v1/messages",
        &with_anthropic(&[("x-mock-split", "byte")]),
        &anthropic_body(json!({})),
    );
    assert!(split.header("content-length").is_some());
    assert_eq!(split.json()["usage"]["input_tokens"], ANTHROPIC_PROMPT);

    // reset-after on an Anthropic stream: the lead and K deltas.
    let resp = mock.post_with(
        "/v1/messages",
        &with_anthropic(&[("x-mock-reset-after", "2")]),
        &body,
    );
    assert_eq!(resp.error_kind(), Some(ErrorKind::ConnectionReset));
    assert_eq!(resp.events().len(), 5);

    // Delay.
    let start = Instant::now();
    let resp = mock.post_with(
        GEMINI_PLAIN,
        &[("x-goog-api-key", "k"), ("x-mock-delay-ms", "200")],
        &gemini_body(json!({})),
    );
    assert_eq!(resp.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(200));

    // Recorded with their auth headers.
    mock.post_with("/v1/messages", ANTHROPIC, &anthropic_body(json!({})));
    let last = mock.get("/v1/_mock/last-request").json();
    assert_eq!(last["path"], "/v1/messages");
    assert_eq!(last["headers"]["x-api-key"], "sk-ant");
    assert_eq!(last["headers"]["anthropic-version"], "2023-06-01");
    mock.post_with(GEMINI_SSE, GEMINI_KEY, &gemini_body(json!({})));
    let last = mock.get("/v1/_mock/last-request").json();
    assert_eq!(last["headers"]["x-goog-api-key"], "AIza-test");
    assert_eq!(last["query"], "alt=sse");
}
