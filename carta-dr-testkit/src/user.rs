//! The unprivileged OS user PostgreSQL runs as, scratch directories it owns, and running commands
//! as that user.

use std::ffi::{CStr, CString};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Name of the OS user clusters run as when the tests run as root.
pub const TEST_USER_NAME: &str = "carta-dr-test";

/// The unprivileged OS user that PostgreSQL and its helpers run as when the tests run as root
/// (PostgreSQL refuses to run as root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestUser {
    /// Login name (`carta-dr-test`).
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Numeric primary group id.
    pub gid: u32,
    /// A writable directory used as `HOME` for commands run as this user.
    pub home: PathBuf,
}

/// The unprivileged OS user clusters run as when the tests run as root; `None` when the tests do
/// not run as root (clusters then run as the current user).
///
/// The user `carta-dr-test` is created with `useradd --system` on first use. Several test
/// processes may race to create it; "already exists" counts as success.
///
/// # Panics
///
/// When the user neither exists nor can be created.
pub fn test_user() -> Option<TestUser> {
    static USER: OnceLock<Option<TestUser>> = OnceLock::new();
    USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let (uid, gid) = ensure_user(TEST_USER_NAME);
        let home = scratch_root().join("carta-dr-test-home");
        match std::fs::DirBuilder::new().mode(0o700).create(&home) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("cannot create {}: {e}", home.display()),
        }
        chown(&home, uid, gid);
        Some(TestUser {
            name: TEST_USER_NAME.to_string(),
            uid,
            gid,
            home,
        })
    })
    .clone()
}

/// Looks the user up, creating it when missing; returns (uid, gid).
fn ensure_user(name: &str) -> (u32, u32) {
    if let Some(ids) = lookup_user(name) {
        return ids;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .output();
        // Another process may have created it in the meantime, whatever useradd said.
        if let Some(ids) = lookup_user(name) {
            return ids;
        }
        let detail = match &out {
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        // `useradd` fails while another useradd holds /etc/passwd's lock: try again.
        let busy = detail.contains("lock") || detail.contains("try again");
        if !busy || Instant::now() > deadline {
            panic!(
                "cannot create the test user `{name}` (PostgreSQL refuses to run as root, so tests \
                 run it as `{name}`): useradd: {detail}. Install the `passwd` package or create \
                 the user yourself: useradd --system --no-create-home --shell /usr/sbin/nologin {name}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `getpwnam_r`, returning (uid, gid).
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain old data; getpwnam_r fills it in.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the duration of the call and buf's length is passed.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points into buf, which is alive.
    let found = unsafe { CStr::from_ptr(pwd.pw_name) };
    (found.to_bytes() == name.as_bytes()).then_some((pwd.pw_uid, pwd.pw_gid))
}

pub(crate) fn chown(path: &Path, uid: u32, gid: u32) {
    if let Err(e) = std::os::unix::fs::chown(path, Some(uid), Some(gid)) {
        panic!("cannot chown {} to {uid}:{gid}: {e}", path.display());
    }
}

/// Hands `path` to the test user when there is one (no-op otherwise).
pub(crate) fn give_to_test_user(path: &Path) {
    if let Some(u) = test_user() {
        chown(path, u.uid, u.gid);
    }
}

/// Where scratch directories go: `$CARTA_DR_TEST_TMP`, else `/tmp` when root (its parents must be
/// traversable by the test user, which `$TMPDIR` may not be), else the usual temp dir.
fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARTA_DR_TEST_TMP") {
        return PathBuf::from(dir);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    }
}

/// A name part unique to this call within the machine: pid, a counter and a random suffix.
pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}-{}-{:06x}",
        std::process::id(),
        n,
        random_u64() & 0xff_ffff
    )
}

/// A random number from std's per-process random hash keys mixed with the clock.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// A temporary directory owned by the test user (when there is one), removed on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory on disk after drop (for post-mortem debugging) and returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }

    /// Creates `name` below this directory, owned by the test user, and returns its path.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        give_to_test_user(&p);
        p
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.keep || std::env::var_os("CARTA_DR_KEEP_TEST_DIRS").is_some() {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("warning: cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// A new empty temp directory (removed on drop) that the test user owns, so PostgreSQL and an
/// `archive_command` running as that user can write in it. `label` appears in its name.
///
/// Set `CARTA_DR_KEEP_TEST_DIRS=1` to keep scratch directories after the tests.
pub fn scratch_dir(label: &str) -> ScratchDir {
    let label: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(24)
        .collect();
    let root = scratch_root();
    let path = root.join(format!("carta-dr-{label}-{}", unique_suffix()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .unwrap_or_else(|e| panic!("cannot create scratch dir {}: {e}", path.display()));
    // mode() is filtered by the umask; make it exact.
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
    give_to_test_user(&path);
    ScratchDir { path, keep: false }
}

/// Makes `cmd` run as the test user when the tests run as root (supplementary groups dropped,
/// then `setgid`, then `setuid` in the child before exec; `HOME`, `USER` and `LOGNAME` set; the
/// working directory defaults to the user's home). Without root, returns `cmd` unchanged.
pub fn as_test_user(cmd: &mut Command) -> &mut Command {
    let Some(user) = test_user() else {
        return cmd;
    };
    cmd.env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name);
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(&user.home);
    }
    let (uid, gid) = (user.uid, user.gid);
    // SAFETY: the closure only makes async-signal-safe syscalls (setgroups, setgid, setuid) and
    // does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
