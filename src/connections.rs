//! Client connections across a stop: how many are open, when the idle keep-alive ones may
//! be closed, and cutting the rest when the drain times out.
//!
//! Pingora closes every idle keep-alive connection the moment its listeners stop: the
//! proxy's `http_cleanup` wakes each connection parked in `read_request` (waiting for its
//! next request) and drops it. A client that sends its next request at that instant gets
//! an EOF or a reset instead of a response, and most clients do not retry a POST.
//!
//! [`DrainingApp`] wraps the proxy app and holds that cleanup back until the drain calls
//! [`ClientConnections::release_idle`]. Meanwhile a parked connection's next request is
//! read and answered as usual, with `Connection: close` (Pingora turns keep-alive off for
//! every request it reads after the shutdown broadcast), and the connection then closes
//! after a complete exchange: no request is lost to the close. The drain releases the idle
//! connections only once no request is in flight and none has started or ended for the
//! idle grace (see `lifecycle::Drain`), so a connection closed then had been idle at least
//! that long. HAProxy's `idle-close-on-response` and Envoy's drain do the same.
//!
//! When the drain times out with requests still in flight (a long stream),
//! [`cut_client_connections`] shuts the client sockets down. Pingora then sees the client
//! side fail, ends each request through its error path, and the `logging` hook writes its
//! record (usage `truncated`), instead of the process exiting under it with no record.
//!
//! Cost: one atomic increment and one decrement per client connection (not per request);
//! nothing on the request path.

use async_trait::async_trait;
use log::debug;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Open client connections of the proxy service, and the gate that lets Pingora close the
/// idle ones.
#[derive(Debug)]
pub struct ClientConnections {
    open: AtomicUsize,
    released: watch::Sender<bool>,
}

impl Default for ClientConnections {
    fn default() -> Self {
        ClientConnections {
            open: AtomicUsize::new(0),
            released: watch::Sender::new(false),
        }
    }
}

impl ClientConnections {
    /// Client connections being served now (idle keep-alive ones included; a connection
    /// still in its TLS handshake is not counted yet).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Let Pingora close the idle keep-alive connections (it does as soon as its listeners
    /// have stopped). Called once by the drain; calling again does nothing.
    pub fn release_idle(&self) {
        self.released.send_replace(true);
    }

    fn enter(&self) -> OpenConnection<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }
}

/// Counts one client connection for as long as it lives.
struct OpenConnection<'a>(&'a ClientConnections);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The proxy app with its stop-time cleanup held back until the drain releases it, and
/// its client connections counted. Everything else goes to the wrapped app unchanged.
pub struct DrainingApp<A> {
    inner: Arc<A>,
    connections: Arc<ClientConnections>,
}

impl<A> DrainingApp<A> {
    /// Wrap `inner` (Pingora's `HttpProxy`), counting its connections in `connections`.
    pub fn new(inner: A, connections: Arc<ClientConnections>) -> Self {
        DrainingApp {
            inner: Arc::new(inner),
            connections,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for DrainingApp<A> {
    /// One call per client connection: Pingora's HTTP/1 app loops over its keep-alive
    /// requests inside this call.
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let _open = self.connections.enter();
        self.inner.process_new(stream, shutdown).await
    }

    /// Pingora calls this once its listeners have stopped; the wrapped app's cleanup (which
    /// drops every idle keep-alive connection) waits for the drain's release.
    async fn cleanup(&self) {
        let mut released = self.connections.released.subscribe();
        // An error means the sender is gone (the process is ending): release now.
        let _ = released.wait_for(|r| *r).await;
        debug!("idle keep-alive connections released");
        self.inner.cleanup().await;
    }
}

/// Shut down every connected client socket whose local port is one of `ports` (the
/// gateway's listeners), so that the requests on them end through Pingora's error path
/// and get their records. Returns how many were shut down. Only for the drain deadline:
/// it walks the process's descriptors (`/proc/self/fd`), so it costs nothing before then.
///
/// Listening sockets are skipped (on an upgrade the new process shares them), and so are
/// upstream connections (their local port is an ephemeral one, never a listening port).
pub fn cut_client_connections(ports: &[u16]) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut cut = 0;
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
            continue;
        };
        if connected_local_port(fd).is_some_and(|p| ports.contains(&p)) {
            // SAFETY: shutdown(2) on a descriptor number has no memory effects; at worst the
            // descriptor was closed meanwhile and the call fails with EBADF or ENOTSOCK.
            if unsafe { libc::shutdown(fd, libc::SHUT_RDWR) } == 0 {
                cut += 1;
            }
        }
    }
    cut
}

/// The local port of `fd` if it is a TCP-family socket that is not listening.
fn connected_local_port(fd: RawFd) -> Option<u16> {
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `listening` and `len` are valid for writes of the sizes given; a descriptor
    // that is not a socket makes the call fail with ENOTSOCK.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || listening != 0 {
        return None;
    }
    // SAFETY: an all-zero sockaddr_storage is a valid value of that plain C struct.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is large enough for any socket address and `len` says so.
    if unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_storage).cast(), &mut len) } != 0 {
        return None;
    }
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(u16::from_be(sin.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(u16::from_be(sin6.sin6_port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn connection_guards_count_open_connections() {
        let c = ClientConnections::default();
        let a = c.enter();
        let b = c.enter();
        assert_eq!(c.open(), 2);
        drop(a);
        assert_eq!(c.open(), 1);
        drop(b);
        assert_eq!(c.open(), 0);
    }

    #[test]
    fn release_is_seen_by_later_waiters() {
        let c = ClientConnections::default();
        assert!(!*c.released.borrow());
        c.release_idle();
        c.release_idle();
        assert!(*c.released.borrow());
        let rx = c.released.subscribe();
        assert!(
            *rx.borrow(),
            "a cleanup that starts after the release does not wait"
        );
    }

    #[test]
    fn the_cut_shuts_down_accepted_sockets_on_the_port_and_spares_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (mut accepted, _) = listener.accept().expect("accept");
        // An outgoing connection (like an upstream one) to another listener.
        let other = TcpListener::bind("127.0.0.1:0").expect("bind other");
        let mut outgoing = TcpStream::connect(other.local_addr().expect("addr")).expect("connect other");
        let (mut other_side, _) = other.accept().expect("accept other");

        assert_eq!(connected_local_port(listener.as_raw_fd()), None, "listening");
        assert_eq!(connected_local_port(accepted.as_raw_fd()), Some(port));
        assert!(cut_client_connections(&[port]) >= 1);

        // The client sees the end of the stream, and the accepted socket can no longer send.
        let mut buf = [0u8; 8];
        assert_eq!(client.read(&mut buf).expect("read"), 0);
        assert!(accepted.write_all(b"x").is_err());
        // The listener still accepts, and the outgoing connection still works.
        let _again = TcpStream::connect(("127.0.0.1", port)).expect("listener still open");
        outgoing.write_all(b"ping").expect("outgoing write");
        let mut got = [0u8; 4];
        other_side.read_exact(&mut got).expect("other side read");
        assert_eq!(&got, b"ping");
    }
}
