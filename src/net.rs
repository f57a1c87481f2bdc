//! What our listening servers share below HTTP and the wire protocol: waking an accept loop.

use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Connects to our own listener at `addr` so that its blocked `accept` returns and the loop
/// sees its stop flag. A wildcard address is reached through the loopback address of its
/// family. Failure is ignored: a listener that cannot be reached is not accepting either.
pub fn wake_accept_loop(addr: SocketAddr) {
    let wake = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
}
