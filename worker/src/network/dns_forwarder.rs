//! Answers the steps' DNS queries on the bridge's gateway by asking the
//! nameservers of this host's resolver config, so a step resolves names as
//! the host does, even when the host's resolver listens on its loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use memobuild_proto::{Result, ResultExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// How long one nameserver gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Queries in flight at once; more are dropped (clients retry).
const MAX_IN_FLIGHT: usize = 256;
/// The largest DNS message.
const MAX_MESSAGE: usize = 65_535;

/// The forwarder's tasks; they stop when it is dropped.
pub struct DnsForwarder {
    tasks: Vec<JoinHandle<()>>,
}

impl DnsForwarder {
    /// Listens on `address:53` (UDP and TCP).
    pub async fn start(address: Ipv4Addr, upstreams: Vec<SocketAddr>) -> Result<Self> {
        let listen = SocketAddr::new(IpAddr::V4(address), 53);
        let udp = Arc::new(UdpSocket::bind(listen).await.with_context(|| format!("DNS forwarder on {listen}/udp"))?);
        let tcp = TcpListener::bind(listen).await.with_context(|| format!("DNS forwarder on {listen}/tcp"))?;
        let upstreams = Arc::new(upstreams);
        let tasks = vec![tokio::spawn(serve_udp(udp, upstreams.clone())), tokio::spawn(serve_tcp(tcp, upstreams))];
        Ok(DnsForwarder { tasks })
    }
}

impl DnsForwarder {
    /// Stops serving; the sockets are closed when this returns.
    pub async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for DnsForwarder {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The nameservers of a resolv.conf, as glibc reads them: none means the
/// local host.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    let found: Vec<SocketAddr> = resolv_conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if found.is_empty() {
        vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53)]
    } else {
        found
    }
}

/// The steps' resolv.conf: the forwarder, and the host's search domains
/// and options.
pub fn step_resolv_conf(host: &str, forwarder: Ipv4Addr) -> String {
    let mut text = format!("nameserver {forwarder}\n");
    for line in host.lines().map(str::trim) {
        if ["search", "domain", "options"].iter().any(|k| line.split_whitespace().next() == Some(k)) {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

async fn serve_udp(socket: Arc<UdpSocket>, upstreams: Arc<Vec<SocketAddr>>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buffer).await else { continue };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else { continue };
        let query = buffer[..len].to_vec();
        let (socket, upstreams) = (socket.clone(), upstreams.clone());
        tokio::spawn(async move {
            if let Some(answer) = ask_udp(&query, &upstreams).await {
                let _ = socket.send_to(&answer, client).await;
            }
            drop(permit);
        });
    }
}

/// The first answer of the nameservers, asked in order.
async fn ask_udp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let local: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
        let Ok(socket) = UdpSocket::bind(local).await else { continue };
        if socket.connect(upstream).await.is_err() || socket.send(query).await.is_err() {
            continue;
        }
        let mut answer = vec![0u8; MAX_MESSAGE];
        if let Ok(Ok(len)) = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut answer)).await {
            answer.truncate(len);
            return Some(answer);
        }
    }
    None
}

async fn serve_tcp(listener: TcpListener, upstreams: Arc<Vec<SocketAddr>>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok((mut client, _)) = listener.accept().await else { continue };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else { continue };
        let upstreams = upstreams.clone();
        tokio::spawn(async move {
            for upstream in upstreams.iter() {
                if let Ok(Ok(mut server)) = tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(upstream)).await {
                    let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let _ = tokio::time::timeout(UPSTREAM_TIMEOUT * 10, relay).await;
                    break;
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn resolv_conf_is_read_as_glibc_reads_it() {
        let host = "# comment\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nsearch corp.example\noptions ndots:2\n";
        assert_eq!(nameservers(host), ["127.0.0.53:53".parse().unwrap(), "[fe80::1]:53".parse().unwrap()]);
        assert_eq!(nameservers("search x\n"), ["127.0.0.1:53".parse().unwrap()]);
        let step = step_resolv_conf(host, Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(step, "nameserver 10.213.0.1\nsearch corp.example\noptions ndots:2\n");
    }

    #[tokio::test]
    async fn queries_reach_the_upstream_and_answers_come_back() {
        // An upstream that answers every query with the query reversed.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_address = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = [0u8; 512];
            while let Ok((len, from)) = upstream.recv_from(&mut buffer).await {
                let mut answer = buffer[..len].to_vec();
                answer.reverse();
                let _ = upstream.send_to(&answer, from).await;
            }
        });
        let answer = ask_udp(b"query", &[upstream_address]).await;
        assert_eq!(answer.as_deref(), Some(&b"yreuq"[..]));
    }
}
