//! The HTTP plumbing shared by the tracker's API and the peer server's metrics endpoint:
//! a tiny_http server bound with our socket settings, and answers with a content type.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::api::ErrorBody;

/// Binds `addr` and starts a tiny_http server on it; `what` names it in errors ("the
/// tracker"). A client that leaves an answer unread for `send_timeout` loses its connection.
pub fn bind(addr: SocketAddr, send_timeout: Duration, what: &str) -> Result<tiny_http::Server> {
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("binding {what} to {addr} (is another process using it?)"))?;
    let addr = listener.local_addr()?;
    // tiny_http sets no timeouts on the connections it accepts, but accepted sockets
    // inherit SO_SNDTIMEO from the listener: a client that stops reading our answer
    // frees its thread after `send_timeout`. SO_RCVTIMEO cannot be set the same way:
    // on Linux it also bounds accept(), and tiny_http stops accepting for good after
    // one failed accept, so an idle server would go deaf.
    rustix::net::sockopt::set_socket_timeout(
        &listener,
        rustix::net::sockopt::Timeout::Send,
        Some(send_timeout),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("setting the send timeout on {addr}"))?;
    // tiny_http writes an answer's head and body separately; with Nagle's algorithm the
    // body then waits for the client's delayed ACK, 40 ms on a kept-alive connection.
    // Accepted sockets inherit TCP_NODELAY from the listener.
    rustix::net::sockopt::set_tcp_nodelay(&listener, true)
        .map_err(std::io::Error::from)
        .with_context(|| format!("setting TCP_NODELAY on {addr}"))?;
    tiny_http::Server::from_listener(listener, None)
        .map_err(|e| anyhow::anyhow!("starting the HTTP server on {addr}: {e}"))
}

/// The address a server from [`bind`] listens on.
pub fn local_addr(server: &tiny_http::Server) -> Result<SocketAddr> {
    server
        .server_addr()
        .to_ip()
        .context("the HTTP server listens on no IP address")
}

/// The JSON body of an error answer.
pub fn error_body(message: impl Into<String>) -> String {
    serde_json::to_string(&ErrorBody {
        error: message.into(),
    })
    .expect("an error body always serializes")
}

/// Answers `request`; a failure (the client went away) is logged as `program: …`.
pub fn respond(
    request: tiny_http::Request,
    status: u16,
    content_type: &str,
    body: String,
    program: &str,
) {
    let remote = request
        .remote_addr()
        .map_or("?".into(), |a: &SocketAddr| a.to_string());
    let header = tiny_http::Header::from_bytes("Content-Type", content_type)
        .expect("content types are valid header values");
    let response = tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(header);
    if let Err(e) = request.respond(response) {
        eprintln!("{program}: answering {remote} failed: {e}");
    }
}
