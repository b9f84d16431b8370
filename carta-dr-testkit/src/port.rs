//! Free TCP ports that no other test (in this process or another) is handed at the same time.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

/// A loopback TCP port that was free when reserved and stays reserved for other carta-dr tests
/// (in this process and in others) until dropped.
///
/// The reservation is an exclusive `flock` on `/tmp/carta-dr-ports/<port>.lock`, which the kernel
/// releases when the holder dies, so a crashed test never leaks a reservation. Programs that are
/// not carta-dr tests can still take the port; servers started on it should retry on "address in
/// use" (as [`crate::PgCluster`] does).
#[derive(Debug)]
pub struct ReservedPort {
    port: u16,
    _lock: File,
}

impl ReservedPort {
    /// The port number.
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn lock_dir() -> PathBuf {
    let dir = PathBuf::from("/tmp/carta-dr-ports");
    if std::fs::DirBuilder::new().mode(0o1777).create(&dir).is_ok() {
        // Sticky and world-writable, so tests running as any user can reserve ports.
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    dir
}

/// Reserves a free loopback TCP port (bind `127.0.0.1:0`, read the port, release the socket,
/// lock the port number).
///
/// # Panics
///
/// When no port can be found after many attempts.
pub fn reserve_port() -> ReservedPort {
    let dir = lock_dir();
    for _ in 0..200 {
        let port = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(e) => panic!("cannot bind a loopback TCP socket: {e}"),
        };
        let path = dir.join(format!("{port}.lock"));
        let file = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => panic!("cannot open port lock {}: {e}", path.display()),
        };
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666));
        // SAFETY: the fd is valid while `file` lives.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return ReservedPort { port, _lock: file };
        }
    }
    panic!("no free loopback TCP port found after 200 attempts")
}
