//! QUIC transport settings and endpoint construction, in one place so that
//! every protocol gets windows sized for its traffic rather than quinn's
//! defaults.

use std::{net::SocketAddr, sync::Arc, time::Duration};

/// Transport for control traffic (tracker API, Raft): many small
/// concurrent streams, fast failure detection.
pub fn control_transport(idle_timeout: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(4096u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((16u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    t.keep_alive_interval(Some(idle_timeout / 4));
    t.max_idle_timeout(Some(idle_timeout.try_into().expect("idle timeout fits")));
    t
}

/// Transport for bulk transfer between peers: large windows so a few
/// streams in flight fill a fast link.
pub fn bulk_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(256u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(Duration::from_secs(10).try_into().expect("fits")));
    t
}

/// Binds a UDP socket with 4 MiB kernel buffers (fewer drops and receive
/// syscalls under load) and makes a quinn endpoint of it.
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    set_buffers(&socket, 4 << 20);
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
}

fn set_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    let sock = socket2_ref(socket);
    let _ = sock.set_recv_buffer_size(bytes);
    let _ = sock.set_send_buffer_size(bytes);
}

fn socket2_ref(socket: &std::net::UdpSocket) -> socket2::SockRef<'_> {
    socket2::SockRef::from(socket)
}

/// Shared handle type for endpoints kept in several places.
pub type SharedEndpoint = Arc<quinn::Endpoint>;
