//! Addresses from the configuration files, in one place: checking them,
//! resolving them when a connection is made, and choosing the socket to
//! bind for a client or the address a node announces.
//!
//! An address the configuration *advertises* (a member's `api`/`raft`, a
//! proxy in a node's `proxies`) is `HOST:PORT`, where HOST is an IP
//! address (`[v6]` in brackets) or a DNS name; a DNS name is resolved at
//! every connect, so a member that moves to a new IP is found again. An
//! address a process *binds* (`listen`, `listen_api`, `listen_raft`) is
//! always an `IP:port`. Nothing here assumes loopback.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
};

/// Splits `HOST:PORT` into its host (without IPv6 brackets) and port, or
/// says why it is not one: the host must be an IP address or a DNS name.
pub fn split_host_port(addr: &str) -> Result<(&str, u16), String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        // Literal IPs, including `[v6]:port`: the host is the text inside.
        let host = addr[..addr.len() - a.port().to_string().len() - 1]
            .trim_start_matches('[')
            .trim_end_matches(']');
        return Ok((host, a.port()));
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not HOST:PORT (an IP address or DNS name, then a port)"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{addr:?}: port {port:?} is not a number from 0 to 65535"))?;
    if !is_dns_name(host) {
        return Err(format!(
            "{addr:?} is not HOST:PORT: {host:?} is neither an IP address nor a DNS name"
        ));
    }
    Ok((host, port))
}

/// A DNS name as a certificate or resolver takes it: dot-separated labels
/// of letters, digits and inner hyphens, at most 253 characters.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.parse::<IpAddr>().is_err()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        // A name made only of digits and dots is a mistyped IP address.
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Checks an advertised `HOST:PORT` (IP or DNS name) and names `field`
/// in the error.
pub fn check_host_port(field: &str, addr: &str) -> Result<(), String> {
    split_host_port(addr)
        .map(|_| ())
        .map_err(|e| format!("field `{field}`: {e}"))
}

/// Checks a bind address (`IP:port`) and names `field` in the error.
pub fn check_bind(field: &str, addr: &str) -> Result<SocketAddr, String> {
    addr.parse().map_err(|_| {
        format!("field `{field}`: {addr:?} is not an IP:port address (a bind address such as 0.0.0.0:7401)")
    })
}

/// Every address `HOST:PORT` stands for now (a literal IP without asking
/// the resolver).
pub async fn resolve_all(addr: &str) -> io::Result<Vec<SocketAddr>> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    split_host_port(addr).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let all: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
    if all.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr}: the name has no address"),
        ));
    }
    Ok(all)
}

/// The address to dial for `HOST:PORT`: its first IPv4 address if it has
/// one (every client endpoint here is dual-purpose IPv4 unless the target
/// is IPv6 only), else its first address.
pub async fn resolve(addr: &str) -> io::Result<SocketAddr> {
    let all = resolve_all(addr).await?;
    Ok(all.iter().copied().find(SocketAddr::is_ipv4).unwrap_or(all[0]))
}

/// The wildcard address with port 0 of `target`'s family: what a client
/// endpoint binds so that it can reach `target` from any interface.
pub fn unspecified_for(target: &SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// The local IP address this host uses to reach `target`: the source
/// address the kernel picks for a UDP socket connected there. Nothing is
/// sent.
pub fn local_ip_towards(target: SocketAddr) -> io::Result<IpAddr> {
    let socket = UdpSocket::bind(unspecified_for(&target))?;
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("10.0.0.1:7401").unwrap(), ("10.0.0.1", 7401));
        assert_eq!(split_host_port("[::1]:7401").unwrap(), ("::1", 7401));
        assert_eq!(
            split_host_port("tracker1.example.org:7401").unwrap(),
            ("tracker1.example.org", 7401)
        );
        assert_eq!(split_host_port("localhost:1").unwrap(), ("localhost", 1));
        for bad in [
            "10.0.0.1",
            "10.0.0.1:x",
            "bad_name:1",
            ":1",
            "1.2.3:80",
            "a..b:1",
            "-a:1",
            "::1:80",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
        assert!(check_bind("listen_api", "tracker1:7401")
            .unwrap_err()
            .contains("listen_api"));
        assert!(check_host_port("members[id=1].api", "x y:1")
            .unwrap_err()
            .contains("members[id=1].api"));
    }

    #[tokio::test]
    async fn resolves_literals_and_names() {
        assert_eq!(
            resolve("127.0.0.1:9").await.unwrap(),
            "127.0.0.1:9".parse::<SocketAddr>().unwrap()
        );
        assert!(resolve("localhost:9").await.unwrap().ip().is_loopback());
        assert!(resolve("no-such-host.invalid:9").await.is_err());
    }

    #[test]
    fn local_ip_towards_loopback_is_loopback() {
        let ip = local_ip_towards("127.0.0.1:7400".parse().unwrap()).unwrap();
        assert!(ip.is_loopback());
        assert!(unspecified_for(&"[::1]:1".parse().unwrap()).is_ipv6());
    }
}
