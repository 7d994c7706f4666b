//! The HTTP/1.1 side of the streaming server: one request per connection,
//! which must upgrade an `/exec/<token>` or `/attach/<token>` URL to
//! SPDY/3.1 or to WebSocket, or a `/portforward/<token>` URL to SPDY/3.1.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::exec::{self, Protocol};
use super::websocket::{self, ChannelProtocol};
use super::{
    AttachRequest, ExecRequest, PortForwardRequest, StreamingServer, attach, portforward,
    spdy_transport,
};

/// The request head may not be larger than this.
const MAX_HEAD: usize = 16 * 1024;
/// The request head must arrive within this time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    /// `(lowercase name, value)` in order; repeated headers stay repeated.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// Every value of header `name`, comma-separated lists split.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }
}

/// The end of the head (the index after `\r\n\r\n`), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a request head (everything up to and including the blank line).
pub fn parse_head(head: &[u8]) -> Result<RequestHead, String> {
    let text = std::str::from_utf8(head).map_err(|_| "the request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("malformed request line {request_line:?}"));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !path.starts_with('/') {
        return Err(format!("malformed request line {request_line:?}"));
    }
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed header line {line:?}"))?;
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(format!("malformed header line {line:?}"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(RequestHead {
        method: method.to_string(),
        path: path.to_string(),
        headers,
    })
}

/// Why an upgrade request is refused: the status line and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: &'static str,
    pub message: String,
}

fn refuse(status: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// Checks the upgrade headers and picks the protocol version.
pub fn negotiate(head: &RequestHead) -> Result<Protocol, Refusal> {
    check_spdy_upgrade(head)?;
    let chosen = choose_version(head, &Protocol::ALL.map(Protocol::name))?;
    // `chosen` is one of the names: the fallback is never taken.
    Ok(Protocol::ALL
        .into_iter()
        .find(|p| p.name() == chosen)
        .unwrap_or(Protocol::V1))
}

/// Checks the upgrade headers of a port-forward request and its version.
pub fn negotiate_port_forward(head: &RequestHead) -> Result<&'static str, Refusal> {
    check_spdy_upgrade(head)?;
    choose_version(head, &[portforward::PROTOCOL])
}

fn check_spdy_upgrade(head: &RequestHead) -> Result<(), Refusal> {
    let upgrade_requested = head
        .values("connection")
        .any(|v| v.eq_ignore_ascii_case("upgrade"));
    let spdy = head
        .values("upgrade")
        .any(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    if !upgrade_requested || !spdy {
        return Err(refuse(
            "400 Bad Request",
            "unable to upgrade: the request must carry Connection: Upgrade and Upgrade: SPDY/3.1",
        ));
    }
    Ok(())
}

/// The first of `accepted` (best first) that the client offers.
fn choose_version(head: &RequestHead, accepted: &[&'static str]) -> Result<&'static str, Refusal> {
    let offered: Vec<&str> = head.values("x-stream-protocol-version").collect();
    accepted
        .iter()
        .copied()
        .find(|name| offered.contains(name))
        .ok_or_else(|| {
            refuse(
                "403 Forbidden",
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {accepted:?}"
                ),
            )
        })
}

fn response(refusal: &Refusal) -> Vec<u8> {
    let body = format!("{}\n", refusal.message);
    format!(
        "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        refusal.status,
        body.len()
    )
    .into_bytes()
}

/// Reads the request head; what follows it stays in the returned buffer.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(RequestHead, Vec<u8>), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(refuse(
                "431 Request Header Fields Too Large",
                "request head too large",
            ));
        }
        let mut chunk = [0u8; 2048];
        match tokio::time::timeout(HEAD_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(refuse("", "")),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(refuse("408 Request Timeout", "request head timed out")),
        }
    };
    let head = parse_head(&buf[..end]).map_err(|m| refuse("400 Bad Request", m))?;
    Ok((head, buf.split_off(end)))
}

/// Serves one connection: the upgrade request, then the SPDY session.
pub async fn serve_connection<S>(mut stream: S, server: Arc<StreamingServer>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (head, leftover) = match read_head(&mut stream).await {
        Ok(read) => read,
        Err(refusal) => {
            if !refusal.status.is_empty() {
                let _ = stream.write_all(&response(&refusal)).await;
            }
            return;
        }
    };
    let Some(request) = take_request(&head, &server) else {
        let _ = stream
            .write_all(&response(&refuse("404 Not Found", "404 page not found")))
            .await;
        return;
    };
    let websocket = head
        .values("upgrade")
        .any(|v| v.eq_ignore_ascii_case("websocket"));
    let negotiated = match request {
        Request::Exec(_) | Request::Attach(_) if websocket => {
            serve_websocket(stream, head, leftover, request, server).await;
            return;
        }
        Request::Exec(request) => negotiate(&head).map(|p| Session::Exec(request, p)),
        Request::Attach(request) => negotiate(&head).map(|p| Session::Attach(request, p)),
        Request::PortForward(request) if websocket => {
            serve_port_forward_websocket(stream, head, leftover, request, server).await;
            return;
        }
        Request::PortForward(request) => {
            negotiate_port_forward(&head).map(|_| Session::PortForward(request))
        }
    };
    let session = match negotiated {
        Ok(session) => session,
        Err(refusal) => {
            let _ = stream.write_all(&response(&refusal)).await;
            return;
        }
    };
    let version = match &session {
        Session::Exec(_, protocol) | Session::Attach(_, protocol) => protocol.name(),
        Session::PortForward(_) => portforward::PROTOCOL,
    };
    let switching = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {version}\r\n\r\n"
    );
    if stream.write_all(switching.as_bytes()).await.is_err() {
        return;
    }
    let conn = spdy_transport::connect(stream, leftover, server.idle_timeout());
    match session {
        Session::Exec(request, protocol) => {
            exec::serve(conn, protocol, request, server.pods().clone()).await;
        }
        Session::Attach(request, protocol) => serve_attach(conn, protocol, request, &server).await,
        Session::PortForward(request) => {
            portforward::serve(conn, request, server.pods().clone()).await;
        }
    }
}

async fn serve_attach(
    conn: super::session::Connection,
    protocol: Protocol,
    request: AttachRequest,
    server: &StreamingServer,
) {
    let dir = server.pods().attach_socket_dir(&request.container_id);
    attach::serve(conn, protocol, request, dir).await;
}

/// A request with its negotiated protocol.
enum Session {
    Exec(ExecRequest, Protocol),
    Attach(AttachRequest, Protocol),
    PortForward(PortForwardRequest),
}

/// What a token stood for.
enum Request {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

/// Consumes the token in the request's path; `None` answers 404.
fn take_request(head: &RequestHead, server: &StreamingServer) -> Option<Request> {
    if !(head.method == "GET" || head.method == "POST") {
        return None;
    }
    let nonempty = |token: &&str| !token.is_empty();
    if let Some(token) = head.path.strip_prefix("/exec/").filter(nonempty) {
        return server.take_exec(token).map(Request::Exec);
    }
    if let Some(token) = head.path.strip_prefix("/attach/").filter(nonempty) {
        return server.take_attach(token).map(Request::Attach);
    }
    if let Some(token) = head.path.strip_prefix("/portforward/").filter(nonempty) {
        return server.take_port_forward(token).map(Request::PortForward);
    }
    None
}

/// Port-forward over WebSocket as client-go does it: SPDY/3.1 tunnelled in
/// binary messages, subprotocol `SPDY/3.1+portforward.k8s.io`.
async fn serve_port_forward_websocket<S>(
    mut stream: S,
    head: RequestHead,
    leftover: Vec<u8>,
    request: PortForwardRequest,
    server: Arc<StreamingServer>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let negotiated = negotiate_websocket(
        &head,
        |offered| {
            offered
                .contains(&PORT_FORWARD_OVER_WEBSOCKET)
                .then_some(PORT_FORWARD_OVER_WEBSOCKET)
        },
        &[PORT_FORWARD_OVER_WEBSOCKET],
    );
    let (protocol, accept) = match negotiated {
        Ok(negotiated) => negotiated,
        Err(refusal) => {
            let _ = stream.write_all(&response(&refusal)).await;
            return;
        }
    };
    let switching = websocket_switching(&accept, Some(protocol));
    if stream.write_all(switching.as_bytes()).await.is_err() {
        return;
    }
    let idle_timeout = server.idle_timeout();
    let tunnel = websocket::byte_stream(stream, leftover, idle_timeout);
    let conn = spdy_transport::connect(tunnel, Vec::new(), idle_timeout);
    portforward::serve(conn, request, server.pods().clone()).await;
}

/// The subprotocol of SPDY tunnelled over WebSocket for port-forward.
pub const PORT_FORWARD_OVER_WEBSOCKET: &str = "SPDY/3.1+portforward.k8s.io";

/// Checks a WebSocket upgrade request: its key, version and the offered
/// subprotocols, one of which `choose` must accept.
pub fn negotiate_websocket<T>(
    head: &RequestHead,
    choose: impl Fn(&[&str]) -> Option<T>,
    supported: &[&str],
) -> Result<(T, String), Refusal> {
    let upgrade_requested = head
        .values("connection")
        .any(|v| v.eq_ignore_ascii_case("upgrade"));
    let key = head
        .headers
        .iter()
        .find(|(name, _)| name == "sec-websocket-key")
        .map(|(_, value)| value.as_str())
        .unwrap_or_default();
    if !upgrade_requested || key.is_empty() {
        return Err(refuse(
            "400 Bad Request",
            "unable to upgrade: a WebSocket upgrade needs Connection: Upgrade and Sec-WebSocket-Key",
        ));
    }
    if !head.values("sec-websocket-version").any(|v| v == "13") {
        return Err(refuse(
            "400 Bad Request",
            "unable to upgrade: only WebSocket version 13 is supported",
        ));
    }
    let offered: Vec<&str> = head.values("sec-websocket-protocol").collect();
    let chosen = choose(&offered).ok_or_else(|| {
        refuse(
            "403 Forbidden",
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
            ),
        )
    })?;
    Ok((chosen, websocket::accept_key(key)))
}

/// The 101 answer to a WebSocket upgrade.
pub fn websocket_switching(accept: &str, protocol: Option<&str>) -> String {
    let protocol = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    )
}

/// Exec over WebSocket: the channel protocols, channels by number (stdin 0,
/// stdout 1, stderr 2, error 3, resize 4) for the streams the request asked for.
async fn serve_websocket<S>(
    mut stream: S,
    head: RequestHead,
    leftover: Vec<u8>,
    request: Request,
    server: Arc<StreamingServer>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let supported: Vec<&str> = ChannelProtocol::ALL.iter().map(|p| p.name()).collect();
    let (protocol, accept) =
        match negotiate_websocket(&head, websocket::negotiate_channels, &supported) {
            Ok(negotiated) => negotiated,
            Err(refusal) => {
                let _ = stream.write_all(&response(&refusal)).await;
                return;
            }
        };
    let named = head.values("sec-websocket-protocol").next().is_some();
    let switching = websocket_switching(&accept, named.then(|| protocol.name()));
    if stream.write_all(switching.as_bytes()).await.is_err() {
        return;
    }
    let channel = |id: u32, kind: &str| (id, vec![("streamtype".to_string(), kind.to_string())]);
    let mut channels = Vec::new();
    let (stdin, stdout, stderr) = match &request {
        Request::Exec(r) => (r.stdin, r.stdout, r.stderr),
        Request::Attach(r) => (r.stdin, r.stdout, r.stderr && !r.tty),
        Request::PortForward(_) => return,
    };
    for (wanted, id, kind) in [
        (stdin, 0, "stdin"),
        (stdout, 1, "stdout"),
        (stderr, 2, "stderr"),
        (true, 3, "error"),
        (true, 4, "resize"),
    ] {
        if wanted {
            channels.push(channel(id, kind));
        }
    }
    let conn =
        websocket::connect_channels(stream, leftover, protocol, channels, server.idle_timeout());
    let status = if protocol.json_status() {
        Protocol::V4
    } else {
        Protocol::V1
    };
    match request {
        Request::Exec(request) => exec::serve(conn, status, request, server.pods().clone()).await,
        Request::Attach(request) => serve_attach(conn, status, request, &server).await,
        Request::PortForward(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> RequestHead {
        parse_head(text.as_bytes()).unwrap()
    }

    #[test]
    fn parses_request_line_and_headers() {
        let h = head(
            "POST /exec/abc HTTP/1.1\r\nHost: x\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nx-stream-protocol-version: v3.channel.k8s.io, channel.k8s.io\r\n\r\n",
        );
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/exec/abc");
        assert_eq!(
            h.values("x-stream-protocol-version").collect::<Vec<_>>(),
            ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]
        );
        assert!(parse_head(b"GET\r\n\r\n").is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nbad line\r\n\r\n").is_err());
        assert!(parse_head(b"GET nopath HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn negotiation_picks_the_best_offered_version() {
        let up = "GET /exec/t HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n";
        let pick = |versions: &str| negotiate(&head(&format!("{up}{versions}\r\n")));
        assert_eq!(
            pick(
                "X-Stream-Protocol-Version: channel.k8s.io\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
            ),
            Ok(Protocol::V4)
        );
        assert_eq!(
            pick("X-Stream-Protocol-Version: v2.channel.k8s.io, v3.channel.k8s.io\r\n"),
            Ok(Protocol::V3)
        );
        assert_eq!(
            pick("X-Stream-Protocol-Version: channel.k8s.io\r\n"),
            Ok(Protocol::V1)
        );
        assert_eq!(pick("").unwrap_err().status, "403 Forbidden");
        assert_eq!(
            pick("X-Stream-Protocol-Version: v5.channel.k8s.io\r\n")
                .unwrap_err()
                .status,
            "403 Forbidden"
        );
        let pf = |versions: &str| {
            negotiate_port_forward(&head(&format!(
                "POST /portforward/t HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n{versions}\r\n"
            )))
        };
        assert_eq!(
            pf("X-Stream-Protocol-Version: portforward.k8s.io\r\n"),
            Ok("portforward.k8s.io")
        );
        assert_eq!(
            pf("X-Stream-Protocol-Version: v4.channel.k8s.io\r\n")
                .unwrap_err()
                .status,
            "403 Forbidden"
        );
        let no_upgrade = negotiate(&head(
            "GET /exec/t HTTP/1.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
        ));
        assert_eq!(no_upgrade.unwrap_err().status, "400 Bad Request");
    }
}
