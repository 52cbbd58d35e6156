//! Sockets: the accept loop, one HTTP/1.1 keep-alive connection per task,
//! deliberate connection cuts, and shutdown on SIGTERM/SIGINT.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use super::misbehave::CutAction;
use super::record::Recorder;
use super::router;

/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The settings of a running mock (from the command line).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    /// `--delay-ms`: before every response's first byte.
    pub delay: Duration,
    /// `--stream-interval-ms`: between stream events.
    pub stream_interval: Duration,
    /// `--models`: the ids `/v1/models` lists.
    pub models: Vec<String>,
    /// `--quiet`: no per-request log lines on stderr.
    pub quiet: bool,
    /// `--aws-secret-access-key`: verify Bedrock SigV4 signatures with it.
    pub aws_secret: Option<String>,
}

/// State shared by every connection.
pub struct State {
    pub config: Config,
    pub recorder: Recorder,
}

/// Lets a request ask its connection's task to cut the socket.
///
/// hyper owns the socket while it serves the connection, so a handler or a
/// body cannot close it directly. It records the wanted action here instead;
/// the connection task, waiting on it next to hyper, then drops hyper's
/// connection and closes the socket itself, with SO_LINGER 0 for a reset.
#[derive(Default)]
pub struct ConnControl {
    /// 0: none, 1: reset, 2: close.
    action: AtomicU8,
    notify: Notify,
}

impl ConnControl {
    /// Asks for the connection to be cut.
    pub fn request(&self, action: CutAction) {
        let code = match action {
            CutAction::Reset => 1,
            CutAction::Close => 2,
        };
        self.action.store(code, Ordering::Release);
        self.notify.notify_one();
    }

    /// Resolves once a cut was asked for.
    async fn wait(&self) -> CutAction {
        loop {
            self.notify.notified().await;
            match self.action.load(Ordering::Acquire) {
                1 => return CutAction::Reset,
                2 => return CutAction::Close,
                _ => {}
            }
        }
    }
}

/// Binds, prints `mock listening on ADDR`, serves until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("mock: cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "mock listening on {addr}")?;
        out.flush()?;
    }
    let state = Arc::new(State {
        config,
        recorder: Recorder::default(),
    });
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(stream, Arc::clone(&state)));
                }
                Err(e) => {
                    eprintln!("mock: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    if !state.config.quiet {
        eprintln!("mock: shutting down");
    }
    Ok(())
}

/// Serves one connection until the client leaves or a request cuts it.
async fn serve_connection(mut stream: TcpStream, state: Arc<State>) {
    // Events are small writes that must leave at once.
    let _ = stream.set_nodelay(true);
    let control = Arc::new(ConnControl::default());
    let cut = {
        let service_control = Arc::clone(&control);
        let service = service_fn(move |req| {
            router::handle(Arc::clone(&state), Arc::clone(&service_control), req)
        });
        let connection = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(&mut stream), service);
        tokio::select! {
            biased;
            // Errors here are the client's doing (bad request line, early
            // close); hyper already answered what it could.
            _ = connection => None,
            action = control.wait() => Some(action),
        }
        // hyper's connection (and its borrow of the socket) is dropped here,
        // without writing anything more.
    };
    if cut == Some(CutAction::Reset) {
        // Closing with a zero linger time sends RST instead of FIN.
        let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
    drop(stream);
}
