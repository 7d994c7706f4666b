//! The `portforward.k8s.io` session: TCP connections into a pod's network
//! namespace, carried over a [`Connection`].
//!
//! For every forwarded connection the client opens two streams, headers
//! `streamtype: error` and `streamtype: data`, both with `port: N` and the
//! same `requestid`. Clients from before request ids send the error stream
//! then the data stream, with consecutive stream ids (n, n + 2); such streams
//! are paired by id as the kubelet does. Once a pair is complete, rcri
//! connects to the port on the pod's loopback and copies both ways: client
//! FIN on the data stream half-closes the TCP connection, TCP end-of-file
//! finishes the data stream, and a failure is written to the error stream as
//! text. The error stream is finished when the forwarded connection is done.
//! Pairs are independent: many ports and connections share one session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::PortForwardRequest;
use super::session::{ClientEvent, Connection, ServerEvent, StreamHeaders};
use crate::pod::{PodManager, PodNetwork};

/// The only port-forward protocol version there is.
pub const PROTOCOL: &str = "portforward.k8s.io";
/// Both streams of a pair must be open within this time of the first.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// After the pod side of a connection ended, the client has this long to end
/// its side; then the connection is closed. client-go waits for the error
/// stream to end before it closes its local connection, so waiting longer
/// would hang clients whose local peer keeps the connection open.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Reads from the pod's port are at most this large.
const CHUNK: usize = 32 * 1024;
/// Chunks queued towards one pod connection; the session waits beyond it.
const UPSTREAM_QUEUE: usize = 8;
/// Data a client may send on a data stream before its pair is complete.
const MAX_EARLY_DATA: usize = 1 << 20;
/// Forwarded connections open at once on one session.
const MAX_PAIRS: usize = 1024;

/// Where the forwarded connections go: the pod's network, or why it cannot
/// be reached (reported on each request's error stream).
pub type Target = Result<PodNetwork, String>;

/// Serves a port-forward session for `request` until the client goes away.
pub async fn serve(conn: Connection, request: PortForwardRequest, pods: Arc<PodManager>) {
    let target = pods
        .pod_network(&request.pod_id)
        .await
        .map_err(|e| e.to_string());
    let short: String = request.pod_id.chars().take(12).collect();
    serve_target(conn, &short, &request.ports, target).await;
}

/// Serves a session forwarding into `target`; `ports`, if not empty, are the
/// only ones that may be forwarded.
pub async fn serve_target(conn: Connection, pod: &str, ports: &[u16], target: Target) {
    run(conn, pod, ports, target, PAIR_TIMEOUT).await
}

async fn run(
    mut conn: Connection,
    pod: &str,
    ports: &[u16],
    target: Target,
    pair_timeout: Duration,
) {
    let mut session = Session {
        pair_timeout,
        out: conn.out.clone(),
        target: Arc::new(target),
        pod: pod.to_string(),
        allowed: ports.to_vec(),
        pairs: HashMap::new(),
        streams: HashMap::new(),
        tasks: JoinSet::new(),
    };
    loop {
        let deadline = session.next_deadline();
        tokio::select! {
            event = conn.events.recv() => match event {
                Some(event) => {
                    if session.handle(event).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            Some(done) = session.tasks.join_next_with_id(), if !session.tasks.is_empty() => {
                if let Ok((task, key)) = done {
                    session.forget(&key, task);
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                if session.expire(Instant::now()).await.is_err() {
                    break;
                }
            }
        }
    }
    // The client is gone: every forwarded connection closes with the session.
    session.tasks.shutdown().await;
    drop(session);
    conn.close().await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The transport is gone.
struct Gone;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

/// Toward the pod's side of a forwarded connection.
enum Upstream {
    Data(Vec<u8>),
    Fin,
}

/// The two streams of one forwarded connection.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    /// The data stream's `port` header.
    port: Option<String>,
    /// Until the pair is complete: when it must be.
    deadline: Option<Instant>,
    /// Data (and FIN) the client sent before the pair was complete.
    early: Vec<u8>,
    early_fin: bool,
    /// Once forwarding: the queue toward the pod's port and the task.
    upstream: Option<mpsc::Sender<Upstream>>,
    task: Option<AbortHandle>,
}

struct Session {
    pair_timeout: Duration,
    out: mpsc::Sender<ServerEvent>,
    target: Arc<Target>,
    pod: String,
    allowed: Vec<u16>,
    /// By request key.
    pairs: HashMap<String, Pair>,
    /// Stream id → its request key and kind.
    streams: HashMap<u32, (String, Kind)>,
    /// One task per forwarded connection; each returns its request key.
    tasks: JoinSet<String>,
}

fn header<'a>(headers: &'a StreamHeaders, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

impl Session {
    async fn send(&self, event: ServerEvent) -> Result<(), Gone> {
        self.out.send(event).await.map_err(|_| Gone)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.pairs.values().filter_map(|p| p.deadline).min()
    }

    async fn handle(&mut self, event: ClientEvent) -> Result<(), Gone> {
        match event {
            ClientEvent::Open { id, headers } => self.open(id, &headers).await,
            ClientEvent::Data { id, data } => {
                let Some((key, Kind::Data)) = self.streams.get(&id).cloned() else {
                    // Nothing is read from the error stream.
                    return Ok(());
                };
                let Some(pair) = self.pairs.get_mut(&key) else {
                    return Ok(());
                };
                if let Some(upstream) = &pair.upstream {
                    // Waiting here is the back-pressure: nothing more is read
                    // from the client until the pod's side took this.
                    let _ = upstream.send(Upstream::Data(data)).await;
                    return Ok(());
                }
                if pair.early.len() + data.len() > MAX_EARLY_DATA {
                    tracing::debug!(request = %key, "port-forward: too much data before the error stream; resetting");
                    return self.drop_pair(&key, true).await;
                }
                pair.early.extend_from_slice(&data);
                Ok(())
            }
            ClientEvent::Fin { id } => {
                let Some((key, Kind::Data)) = self.streams.get(&id).cloned() else {
                    // client-go ends its side of the error stream at once.
                    return Ok(());
                };
                if let Some(pair) = self.pairs.get_mut(&key) {
                    match &pair.upstream {
                        Some(upstream) => {
                            let _ = upstream.send(Upstream::Fin).await;
                        }
                        None => pair.early_fin = true,
                    }
                }
                Ok(())
            }
            ClientEvent::Reset { id } => {
                let Some((key, kind)) = self.streams.get(&id).cloned() else {
                    return Ok(());
                };
                self.streams.remove(&id);
                let Some(pair) = self.pairs.get_mut(&key) else {
                    return Ok(());
                };
                match kind {
                    // Errors can no longer be told, forwarding goes on.
                    Kind::Error => {
                        pair.error = None;
                        Ok(())
                    }
                    Kind::Data => {
                        pair.data = None;
                        self.drop_pair(&key, false).await
                    }
                }
            }
        }
    }

    async fn open(&mut self, id: u32, headers: &StreamHeaders) -> Result<(), Gone> {
        let kind = match header(headers, "streamtype") {
            Some("error") => Kind::Error,
            Some("data") => Kind::Data,
            other => {
                tracing::debug!(stream = id, streamtype = ?other, "port-forward: refusing a stream of unknown type");
                return self.send(ServerEvent::Refuse { id }).await;
            }
        };
        let key = match header(headers, "requestid") {
            Some(request) => format!("r{request}"),
            // Old clients: the error stream (id n) comes right before the
            // data stream (id n + 2).
            None => match kind {
                Kind::Error => format!("s{id}"),
                Kind::Data => format!("s{}", id.wrapping_sub(2)),
            },
        };
        if self.streams.contains_key(&id) {
            return self.send(ServerEvent::Refuse { id }).await;
        }
        let new = !self.pairs.contains_key(&key);
        if new && self.pairs.len() >= MAX_PAIRS {
            tracing::debug!("port-forward: too many connections on one session; refusing");
            return self.send(ServerEvent::Refuse { id }).await;
        }
        let pair_timeout = self.pair_timeout;
        let pair = self.pairs.entry(key.clone()).or_insert_with(|| Pair {
            deadline: Some(Instant::now() + pair_timeout),
            ..Pair::default()
        });
        let slot = match kind {
            Kind::Error => &mut pair.error,
            Kind::Data => &mut pair.data,
        };
        if slot.is_some() || pair.task.is_some() {
            tracing::debug!(request = %key, "port-forward: a second stream of the same type; refusing");
            return self.send(ServerEvent::Refuse { id }).await;
        }
        *slot = Some(id);
        if kind == Kind::Data {
            pair.port = header(headers, "port").map(str::to_string);
        }
        self.streams.insert(id, (key.clone(), kind));
        self.send(ServerEvent::Accept { id }).await?;
        if let Some(pair) = self.pairs.get_mut(&key)
            && let (Some(error), Some(data)) = (pair.error, pair.data)
        {
            self.start(&key, error, data);
        }
        Ok(())
    }

    /// Both streams are open: forwards in a task of its own.
    fn start(&mut self, key: &str, error: u32, data: u32) {
        let Some(pair) = self.pairs.get_mut(key) else {
            return;
        };
        let (tx, rx) = mpsc::channel(UPSTREAM_QUEUE);
        let job = Forward {
            key: key.to_string(),
            error,
            data,
            port: pair.port.take(),
            early: std::mem::take(&mut pair.early),
            early_fin: pair.early_fin,
            upstream: rx,
            out: self.out.clone(),
            target: self.target.clone(),
            pod: self.pod.clone(),
            allowed: self.allowed.clone(),
        };
        pair.deadline = None;
        pair.upstream = Some(tx);
        pair.task = Some(self.tasks.spawn(job.run()));
    }

    /// Forgets the request whose forwarding task `task` finished (unless
    /// the request was dropped and its id reused meanwhile).
    fn forget(&mut self, key: &str, task: tokio::task::Id) {
        let ours = self
            .pairs
            .get(key)
            .and_then(|p| p.task.as_ref())
            .is_some_and(|t| t.id() == task);
        if let (true, Some(pair)) = (ours, self.pairs.remove(key)) {
            for id in [pair.error, pair.data].into_iter().flatten() {
                self.streams.remove(&id);
            }
        }
    }

    /// Ends a request at once: stops its forwarding, resets its data stream
    /// if `reset` and finishes its error stream.
    async fn drop_pair(&mut self, key: &str, reset: bool) -> Result<(), Gone> {
        let Some(pair) = self.pairs.remove(key) else {
            return Ok(());
        };
        if let Some(task) = &pair.task {
            task.abort();
        }
        for id in [pair.error, pair.data].into_iter().flatten() {
            self.streams.remove(&id);
        }
        if let (true, Some(data)) = (reset, pair.data) {
            self.send(ServerEvent::Reset { id: data }).await?;
        }
        if let Some(error) = pair.error {
            self.send(ServerEvent::Finish { id: error }).await?;
        }
        Ok(())
    }

    /// Ends the pairs whose second stream did not come in time.
    async fn expire(&mut self, now: Instant) -> Result<(), Gone> {
        let late: Vec<String> = self
            .pairs
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in late {
            let missing = if self.pairs[&key].data.is_none() {
                "data"
            } else {
                "error"
            };
            tracing::debug!(request = %key, missing, "port-forward: a stream pair was not completed in time");
            if let Some(error) = self.pairs[&key].error {
                let message = format!(
                    "timed out after {:?} waiting for the {missing} stream of this port-forward request",
                    self.pair_timeout
                );
                self.send(ServerEvent::Data {
                    id: error,
                    data: message.into_bytes(),
                })
                .await?;
            }
            self.drop_pair(&key, true).await?;
        }
        Ok(())
    }
}

/// One forwarded connection, from connect to close.
struct Forward {
    key: String,
    error: u32,
    data: u32,
    port: Option<String>,
    early: Vec<u8>,
    early_fin: bool,
    upstream: mpsc::Receiver<Upstream>,
    out: mpsc::Sender<ServerEvent>,
    target: Arc<Target>,
    pod: String,
    allowed: Vec<u16>,
}

impl Forward {
    async fn run(self) -> String {
        let Forward {
            key,
            error,
            data,
            port,
            early,
            early_fin,
            upstream,
            out,
            target,
            pod,
            allowed,
        } = self;
        let failure = match check_port(port.as_deref(), &allowed) {
            Err(message) => Some(message),
            Ok(port) => match target.as_ref() {
                Err(message) => Some(format!("port {port} of pod {pod}: {message}")),
                Ok(network) => match network.connect_loopback(port).await {
                    Err(e) => Some(format!("port {port} of pod {pod}: {e}")),
                    Ok(tcp) => copy_both_ways(tcp, data, early, early_fin, upstream, &out)
                        .await
                        .err()
                        .map(|e| format!("port {port} of pod {pod}: {e}")),
                },
            },
        };
        if let Some(message) = failure {
            tracing::debug!(request = %key, %message, "port-forward failed");
            let _ = out
                .send(ServerEvent::Data {
                    id: error,
                    data: message.into_bytes(),
                })
                .await;
            let _ = out.send(ServerEvent::Finish { id: data }).await;
        }
        let _ = out.send(ServerEvent::Finish { id: error }).await;
        key
    }
}

/// The port to connect to, from the data stream's `port` header.
fn check_port(header: Option<&str>, allowed: &[u16]) -> Result<u16, String> {
    let Some(text) = header else {
        return Err("the data stream has no port header".into());
    };
    let port = match text.trim().parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => {
            // The header is the client's: quoted, and only its start.
            let shown: String = text.chars().take(32).collect();
            return Err(format!(
                "invalid port {shown:?}: want a number from 1 to 65535"
            ));
        }
    };
    if !allowed.is_empty() && !allowed.contains(&port) {
        return Err(format!(
            "port {port} was not requested: this URL forwards only port(s) {}",
            allowed
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(port)
}

/// Copies between the client's data stream and the pod's port until both
/// sides are done (or the pod's side ended and the client took longer than
/// [`CLOSE_GRACE`] to end its own). The data stream is finished by the
/// caller's FIN only on success.
async fn copy_both_ways(
    tcp: tokio::net::TcpStream,
    data: u32,
    early: Vec<u8>,
    early_fin: bool,
    mut upstream: mpsc::Receiver<Upstream>,
    out: &mpsc::Sender<ServerEvent>,
) -> Result<(), String> {
    let (mut rd, mut wr) = tcp.into_split();
    let to_pod = async move {
        if !early.is_empty() {
            wr.write_all(&early).await?;
        }
        if !early_fin {
            while let Some(Upstream::Data(bytes)) = upstream.recv().await {
                wr.write_all(&bytes).await?;
            }
        }
        // Client FIN (or the session dropping this request): half-close.
        wr.shutdown().await
    };
    let from_pod = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => {
                    let _ = out.send(ServerEvent::Finish { id: data }).await;
                    return Ok(());
                }
                Ok(n) => {
                    let chunk = ServerEvent::Data {
                        id: data,
                        data: buf[..n].to_vec(),
                    };
                    if out.send(chunk).await.is_err() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(format!("reading from the pod's port: {e}")),
            }
        }
    };
    tokio::pin!(to_pod, from_pod);
    tokio::select! {
        sent = &mut to_pod => {
            sent.map_err(|e| format!("writing to the pod's port: {e}"))?;
            from_pod.await
        }
        received = &mut from_pod => {
            received?;
            match tokio::time::timeout(CLOSE_GRACE, to_pod).await {
                Ok(sent) => sent.map_err(|e| format!("writing to the pod's port: {e}")),
                Err(_) => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_checked() {
        assert_eq!(check_port(Some("8080"), &[]), Ok(8080));
        assert_eq!(check_port(Some("80"), &[80, 443]), Ok(80));
        assert!(
            check_port(None, &[])
                .unwrap_err()
                .contains("no port header")
        );
        for bad in ["0", "65536", "-1", "http", ""] {
            let error = check_port(Some(bad), &[]).unwrap_err();
            assert!(error.starts_with("invalid port"), "{bad}: {error}");
        }
        assert_eq!(
            check_port(Some("22"), &[80, 443]).unwrap_err(),
            "port 22 was not requested: this URL forwards only port(s) 80, 443"
        );
    }

    use std::collections::BTreeMap;
    use tokio::net::TcpListener;

    /// A session on channels, forwarding into the host's loopback.
    struct Client {
        events: mpsc::Sender<ClientEvent>,
        out: mpsc::Receiver<ServerEvent>,
        session: tokio::task::JoinHandle<()>,
        /// Per stream: data received, finished, reset; accepted/refused ids.
        data: BTreeMap<u32, Vec<u8>>,
        finished: Vec<u32>,
        reset: Vec<u32>,
        accepted: Vec<u32>,
        refused: Vec<u32>,
    }

    fn client(ports: &[u16]) -> Client {
        client_with(ports, PAIR_TIMEOUT)
    }

    fn client_with(ports: &[u16], pair_timeout: Duration) -> Client {
        let (events, events_rx) = mpsc::channel(4);
        let (out_tx, out) = mpsc::channel(4);
        let conn = Connection {
            events: events_rx,
            out: out_tx,
            done: tokio::spawn(async {}),
        };
        let ports = ports.to_vec();
        let session = tokio::spawn(async move {
            run(conn, "0123abcd", &ports, Ok(PodNetwork::Host), pair_timeout).await
        });
        Client {
            events,
            out,
            session,
            data: BTreeMap::new(),
            finished: Vec::new(),
            reset: Vec::new(),
            accepted: Vec::new(),
            refused: Vec::new(),
        }
    }

    impl Client {
        async fn send(&self, event: ClientEvent) {
            self.events.send(event).await.unwrap();
        }

        async fn open(&self, id: u32, kind: &str, port: &str, request: Option<&str>) {
            let mut headers = vec![
                ("streamtype".to_string(), kind.to_string()),
                ("port".to_string(), port.to_string()),
            ];
            if let Some(request) = request {
                headers.push(("requestid".into(), request.into()));
            }
            self.send(ClientEvent::Open { id, headers }).await;
        }

        async fn data(&self, id: u32, bytes: &[u8]) {
            self.send(ClientEvent::Data {
                id,
                data: bytes.to_vec(),
            })
            .await;
        }

        /// Takes server events until `done` holds.
        async fn until(&mut self, done: impl Fn(&Client) -> bool) {
            while !done(self) {
                let event = tokio::time::timeout(Duration::from_secs(10), self.out.recv())
                    .await
                    .expect("the session answers within 10 s")
                    .expect("the session is still there");
                match event {
                    ServerEvent::Accept { id } => self.accepted.push(id),
                    ServerEvent::Refuse { id } => self.refused.push(id),
                    ServerEvent::Data { id, data } => {
                        assert!(!self.finished.contains(&id), "data after FIN on {id}");
                        self.data.entry(id).or_default().extend(data)
                    }
                    ServerEvent::Finish { id } => self.finished.push(id),
                    ServerEvent::Reset { id } => self.reset.push(id),
                }
            }
        }

        fn text(&self, id: u32) -> String {
            String::from_utf8_lossy(self.data.get(&id).map(Vec::as_slice).unwrap_or_default())
                .into_owned()
        }
    }

    /// A server that answers each connection with `greeting` and then echoes
    /// what it reads until end-of-file, then closes.
    async fn echo_server(greeting: &'static str) -> (u16, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = tokio::spawn(async move {
            let mut count = 0;
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return count;
                };
                count += 1;
                tokio::spawn(async move {
                    tcp.write_all(greeting.as_bytes()).await.unwrap();
                    let (mut rd, mut wr) = tcp.split();
                    tokio::io::copy(&mut rd, &mut wr).await.unwrap();
                });
            }
        });
        (port, served)
    }

    async fn free_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn forwards_both_ways_with_half_close() {
        let (port, _server) = echo_server("hi ").await;
        let mut c = client(&[]);
        let port = port.to_string();
        c.open(1, "error", &port, Some("0")).await;
        c.send(ClientEvent::Fin { id: 1 }).await;
        c.open(3, "data", &port, Some("0")).await;
        c.data(3, b"hello ").await;
        c.data(3, b"world").await;
        c.until(|c| c.text(3) == "hi hello world").await;
        assert_eq!(c.accepted, [1, 3]);
        assert!(c.finished.is_empty(), "the connection stays open");
        // FIN half-closes: the echo server sees end-of-file and closes, which
        // finishes the data stream, then the error stream, with no error.
        c.send(ClientEvent::Fin { id: 3 }).await;
        c.until(|c| c.finished.len() == 2).await;
        assert_eq!(c.finished, [3, 1]);
        assert_eq!(c.text(1), "");
        drop(c.events);
        c.session.await.unwrap();
        assert!(
            c.out.recv().await.is_none(),
            "the session let go of the connection"
        );
    }

    #[tokio::test]
    async fn several_ports_and_connections_at_once() {
        let (a, _sa) = echo_server("a:").await;
        let (b, _sb) = echo_server("b:").await;
        let mut c = client(&[a, b]);
        let (a, b) = (a.to_string(), b.to_string());
        // Three connections interleaved: two to port a, one to port b.
        c.open(1, "error", &a, Some("1")).await;
        c.open(3, "error", &b, Some("2")).await;
        c.open(5, "data", &b, Some("2")).await;
        c.open(7, "error", &a, Some("3")).await;
        c.open(9, "data", &a, Some("3")).await;
        c.open(11, "data", &a, Some("1")).await;
        c.data(5, b"two").await;
        c.data(9, b"three").await;
        c.data(11, b"one").await;
        c.until(|c| c.text(11) == "a:one" && c.text(5) == "b:two" && c.text(9) == "a:three")
            .await;
        for id in [11, 5, 9] {
            c.send(ClientEvent::Fin { id }).await;
        }
        c.until(|c| c.finished.len() == 6).await;
        assert!(c.refused.is_empty());
        assert!(c.data.keys().all(|id| [5, 9, 11].contains(id)), "no errors");
    }

    #[tokio::test]
    async fn failures_go_to_the_error_stream() {
        let closed = free_port().await;
        let (open, _s) = echo_server("").await;
        let mut c = client(&[closed, open]);
        let closed_text = closed.to_string();
        c.open(1, "error", &closed_text, Some("x")).await;
        c.open(3, "data", &closed_text, Some("x")).await;
        c.until(|c| c.finished.len() == 2).await;
        let expected = format!(
            "port {closed} of pod 0123abcd: cannot connect to port {closed} inside the pod's network namespace: 127.0.0.1:{closed}: connection refused; [::1]:{closed}: "
        );
        assert!(c.text(1).starts_with(&expected), "{}", c.text(1));
        assert_eq!(c.text(3), "");

        // A port not in the request, and a bad port header.
        c.open(5, "error", "22", Some("y")).await;
        c.open(7, "data", "22", Some("y")).await;
        c.open(9, "error", "http", Some("z")).await;
        c.open(11, "data", "http", Some("z")).await;
        c.until(|c| c.finished.len() == 6).await;
        assert!(
            c.text(5).starts_with("port 22 was not requested"),
            "{}",
            c.text(5)
        );
        assert!(
            c.text(9).starts_with("invalid port \"http\""),
            "{}",
            c.text(9)
        );

        // Unknown stream types and second streams of a kind are refused.
        c.open(13, "stdin", "1", Some("w")).await;
        c.send(ClientEvent::Open {
            id: 15,
            headers: vec![],
        })
        .await;
        c.open(17, "error", &open.to_string(), Some("v")).await;
        c.open(19, "error", &open.to_string(), Some("v")).await;
        c.until(|c| c.refused.len() == 3).await;
        assert_eq!(c.refused, [13, 15, 19]);
    }

    #[tokio::test]
    async fn old_clients_pair_by_stream_id() {
        let (port, _s) = echo_server("old:").await;
        let mut c = client(&[]);
        let port = port.to_string();
        c.open(1, "error", &port, None).await;
        c.open(3, "data", &port, None).await;
        c.open(5, "error", &port, None).await;
        c.open(7, "data", &port, None).await;
        c.data(3, b"1").await;
        c.data(7, b"2").await;
        c.until(|c| c.text(3) == "old:1" && c.text(7) == "old:2")
            .await;
        assert!(c.refused.is_empty());
    }

    #[tokio::test]
    async fn data_before_the_error_stream_is_kept() {
        let (port, _s) = echo_server("").await;
        let mut c = client(&[]);
        let port = port.to_string();
        c.open(3, "data", &port, Some("1")).await;
        c.data(3, b"early").await;
        c.send(ClientEvent::Fin { id: 3 }).await;
        c.open(1, "error", &port, Some("1")).await;
        c.until(|c| c.finished.len() == 2).await;
        assert_eq!(c.text(3), "early");
    }

    #[tokio::test]
    async fn the_client_leaving_closes_every_forwarded_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let mut c = client(&[]);
        c.open(1, "error", &port, Some("1")).await;
        c.open(3, "data", &port, Some("1")).await;
        c.until(|c| c.accepted.len() == 2).await;
        let (mut tcp, _) = listener.accept().await.unwrap();
        // A reset data stream closes its connection at once.
        c.send(ClientEvent::Reset { id: 3 }).await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        c.until(|c| c.finished == [1]).await;

        c.open(5, "error", &port, Some("2")).await;
        c.open(7, "data", &port, Some("2")).await;
        let (mut tcp, _) = listener.accept().await.unwrap();
        drop(c.events);
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        c.session.await.unwrap();
    }

    #[tokio::test]
    async fn an_incomplete_pair_times_out() {
        let mut c = client_with(&[], Duration::from_millis(100));
        c.open(1, "error", "80", Some("1")).await;
        c.open(5, "data", "80", Some("2")).await;
        c.until(|c| c.finished == [1] && c.reset == [5]).await;
        assert!(
            c.text(1)
                .starts_with("timed out after 100ms waiting for the data stream")
        );
    }
}
