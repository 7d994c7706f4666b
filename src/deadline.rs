//! The outermost layer of the gRPC server: honours the client's deadline
//! (the `grpc-timeout` header) and answers `DEADLINE_EXCEEDED` when it
//! passes, as containerd and CRI-O do. tonic's transport server maps an
//! expired deadline to `CANCELLED`, which critest refuses; that is why rcri
//! serves its connections itself (see `server::serve`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use tonic::Status;
use tonic::body::Body;

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Why a `grpc-timeout` value is unusable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    #[error("the value is not ASCII")]
    NotAscii,
    #[error("the value needs 1 to 8 digits followed by a unit, got {0:?}")]
    Malformed(String),
    #[error("unknown unit {0:?} (one of H, M, S, m, u, n)")]
    Unit(char),
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit, `H`
/// (hours), `M` (minutes), `S` (seconds), `m` (milliseconds), `u`
/// (microseconds) or `n` (nanoseconds), as the gRPC HTTP/2 spec says.
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, TimeoutError> {
    let value = std::str::from_utf8(value)
        .ok()
        .filter(|v| v.is_ascii())
        .ok_or(TimeoutError::NotAscii)?;
    let malformed = || TimeoutError::Malformed(value.to_string());
    let Some(unit) = value.chars().last() else {
        return Err(malformed());
    };
    let digits = &value[..value.len() - 1];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    // At most 8 digits: always fits, even as hours in seconds.
    let amount: u64 = digits.parse().map_err(|_| malformed())?;
    Ok(match unit {
        'H' => Duration::from_secs(amount * 3600),
        'M' => Duration::from_secs(amount * 60),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        other => return Err(TimeoutError::Unit(other)),
    })
}

/// Removes `grpc-timeout` from the headers and returns the deadline it
/// asked for. A malformed value is ignored, as tonic does (grpc-go refuses
/// the call instead): the client enforces its own deadline anyway, so
/// running without one here cannot make a call outlive the client's wish
/// by more than the handler takes, whereas refusing would fail a call that
/// could have succeeded.
fn take_timeout(headers: &mut HeaderMap) -> Option<Duration> {
    let value = headers.remove(GRPC_TIMEOUT)?;
    match parse_grpc_timeout(value.as_bytes()) {
        Ok(timeout) => Some(timeout),
        Err(e) => {
            tracing::debug!(value = ?value, error = %e, "ignoring a malformed grpc-timeout header");
            None
        }
    }
}

/// Wraps the routed services. Each call runs as its own task: when the
/// deadline passes (or the client resets the stream) the answer is given up
/// but the handler runs to completion, because not every handler is
/// cancel-safe (`PodManager::run_pod` reserves the pod's name before it
/// creates the pod and would leave it reserved, with its network namespace,
/// if dropped halfway). Pulls are cancel-safe, but finishing one the kubelet
/// will ask again for is no waste.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

impl<S> Deadline<S> {
    pub fn new(inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

type CallFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S, B> tower::Service<Request<B>> for Deadline<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> CallFuture {
        let timeout = take_timeout(request.headers_mut());
        let method = request.uri().path().trim_start_matches('/').to_string();
        let call = tokio::spawn(self.inner.call(request));
        Box::pin(async move {
            let finished = match timeout {
                Some(timeout) => match tokio::time::timeout(timeout, call).await {
                    Ok(finished) => finished,
                    Err(_) => {
                        tracing::debug!(method, ?timeout, "the client's deadline passed");
                        return Ok(deadline_exceeded(timeout, &method));
                    }
                },
                None => call.await,
            };
            match finished {
                Ok(answer) => answer,
                // A handler that panicked: the client gets an answer, and the
                // connection and its other calls live on.
                Err(e) => {
                    tracing::error!(method, error = %e, "the call's task failed");
                    Ok(Status::internal(format!("rcri failed while serving {method}")).into_http())
                }
            }
        })
    }
}

/// A trailers-only answer, as the gRPC spec wants for an error without a
/// message body.
fn deadline_exceeded(timeout: Duration, method: &str) -> Response<Body> {
    Status::deadline_exceeded(format!(
        "the client's deadline of {timeout:?} passed before rcri finished {method}"
    ))
    .into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        for (value, expected) in [
            ("2H", Duration::from_secs(7200)),
            ("3M", Duration::from_secs(180)),
            ("10S", Duration::from_secs(10)),
            ("1m", Duration::from_millis(1)),
            ("999803u", Duration::from_micros(999_803)),
            ("50n", Duration::from_nanos(50)),
            ("0m", Duration::ZERO),
            ("00000007S", Duration::from_secs(7)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ] {
            assert_eq!(
                parse_grpc_timeout(value.as_bytes()),
                Ok(expected),
                "{value}"
            );
        }
    }

    #[test]
    fn malformed_values_are_refused() {
        for value in [
            "",
            "m",
            "S",
            "123456789m",
            "-1S",
            "+1S",
            "1.5S",
            " 1S",
            "1S ",
            "1",
        ] {
            assert!(
                matches!(
                    parse_grpc_timeout(value.as_bytes()),
                    Err(TimeoutError::Malformed(_) | TimeoutError::Unit(_))
                ),
                "{value:?}"
            );
        }
        assert_eq!(
            parse_grpc_timeout(b"1s"),
            Err(TimeoutError::Unit('s')),
            "units are case-sensitive"
        );
        assert_eq!(parse_grpc_timeout(b"1\xff"), Err(TimeoutError::NotAscii));
        assert_eq!(
            parse_grpc_timeout("1µ".as_bytes()),
            Err(TimeoutError::NotAscii)
        );
    }

    #[test]
    fn the_header_is_taken_out_and_a_bad_one_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_TIMEOUT, "1m".parse().unwrap());
        assert_eq!(take_timeout(&mut headers), Some(Duration::from_millis(1)));
        assert!(headers.is_empty());
        headers.insert(GRPC_TIMEOUT, "soon".parse().unwrap());
        assert_eq!(take_timeout(&mut headers), None);
        assert!(headers.is_empty());
    }

    #[tokio::test]
    async fn a_slow_call_gets_deadline_exceeded_and_a_quick_one_its_answer() {
        use tower::Service;
        let slow = tower::service_fn(|request: Request<()>| async move {
            assert!(request.headers().get(GRPC_TIMEOUT).is_none());
            if request.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let mut service = Deadline::new(slow);
        let request = |path: &str| {
            Request::builder()
                .uri(path)
                .header(GRPC_TIMEOUT, "20m")
                .body(())
                .unwrap()
        };
        let response = service.call(request("/slow")).await.unwrap();
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            status.message(),
            "the client's deadline of 20ms passed before rcri finished slow"
        );
        let response = service.call(request("/quick")).await.unwrap();
        assert!(Status::from_header_map(response.headers()).is_none());
    }
}
