//! Shared helpers of the promotion, failover and rejoin tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use carta_dr_postgres::local_cluster::{OsUser, PgInstall};
use carta_dr_postgres::promote::PgNode;
use carta_dr_testkit::{
    as_test_user, pg_bin_dir, reserve_port, test_user, wait_for, PgCluster, ReservedPort,
    ScratchDir,
};

/// PostgreSQL's binaries, run as the test user (as the testkit runs its clusters).
pub fn pg_bin() -> PgInstall {
    PgInstall {
        bin_dir: pg_bin_dir(),
        run_as: test_user().map(|u| OsUser {
            name: u.name,
            uid: u.uid,
            gid: u.gid,
            home: u.home,
        }),
    }
}

/// The node for a testkit cluster.
pub fn node(name: &str, c: &PgCluster) -> PgNode {
    PgNode::new(name, c.conninfo("postgres")).data_dir(c.data_dir())
}

/// A primary (with `conf`) and a streaming standby.
pub fn pair(conf: &[(&str, &str)]) -> (PgCluster, PgCluster) {
    let mut b = PgCluster::builder().label("promote-primary");
    for (k, v) in conf {
        b = b.conf(k, v);
    }
    let primary = b.start();
    let standby = primary.create_standby(None);
    (primary, standby)
}

/// Whether the server answers `pg_is_in_recovery()` with `t`.
pub fn in_recovery(c: &PgCluster) -> bool {
    c.psql("postgres", "SELECT pg_is_in_recovery()") == "t"
}

/// Waits until the standby has replayed everything the primary wrote so far.
pub fn wait_caught_up(primary: &PgCluster, standby: &PgCluster) {
    let target = primary.psql("postgres", "SELECT pg_current_wal_lsn()");
    wait_for("the standby to catch up", Duration::from_secs(60), || {
        standby
            .try_psql(
                "postgres",
                &format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"),
            )
            .is_ok_and(|s| s == "t")
    });
}

/// A real pgbouncer, run as the test user from its own scratch directory on a free port.
pub struct PgBouncer {
    pub dir: ScratchDir,
    pub ini: PathBuf,
    port: ReservedPort,
    child: Child,
}

impl PgBouncer {
    /// Starts pgbouncer with database `app` pointing at `host:port` (database `postgres`).
    pub fn start(backend_port: u16) -> PgBouncer {
        let exe = which("pgbouncer").unwrap_or_else(|| {
            panic!(
                "pgbouncer is not installed: apt-get install -y pgbouncer (scripts/test.sh \
                 installs it)"
            )
        });
        let dir = carta_dr_testkit::scratch_dir("pgbouncer");
        let port = reserve_port();
        let ini = dir.path().join("pgbouncer.ini");
        let userlist = dir.path().join("userlist.txt");
        std::fs::write(&userlist, "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\napp = host=127.0.0.1 port={backend_port} dbname=postgres\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {}\nunix_socket_dir = {}\n\
                 auth_type = trust\nauth_file = {}\nadmin_users = postgres\npool_mode = session\n\
                 server_login_retry = 1\nlogfile = {}\npidfile = {}\n",
                port.port(),
                dir.path().display(),
                userlist.display(),
                dir.path().join("pgbouncer.log").display(),
                dir.path().join("pgbouncer.pid").display(),
            ),
        )
        .unwrap();
        if let Some(u) = test_user() {
            for p in [&ini, &userlist] {
                std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid)).unwrap();
            }
        }
        let mut cmd = Command::new(exe);
        cmd.arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_test_user(&mut cmd);
        let child = cmd.spawn().expect("start pgbouncer");
        let b = PgBouncer {
            dir,
            ini,
            port,
            child,
        };
        let admin = b.admin_conninfo();
        wait_for(
            "pgbouncer to accept connections",
            Duration::from_secs(30),
            || {
                Command::new(pg_bin_dir().join("psql"))
                    .args(["-XAtq", "-c", "SHOW VERSION", &admin])
                    .output()
                    .is_ok_and(|o| o.status.success())
            },
        );
        b
    }

    pub fn port(&self) -> u16 {
        self.port.port()
    }

    pub fn admin_conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=pgbouncer",
            self.port()
        )
    }

    pub fn client_conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=app",
            self.port()
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| Path::new(p).is_file())
}
