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
