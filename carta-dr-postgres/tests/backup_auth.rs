//! The replication client authenticates with SCRAM-SHA-256 and MD5 against a real PostgreSQL
//! 15, over TCP and over the Unix socket, and a wrong password is refused with the server's
//! message.

use carta_dr_postgres::replication::{ConnParams, ReplicationConnection};
use carta_dr_testkit::PgCluster;

fn with_auth() -> PgCluster {
    let pg = PgCluster::builder().label("bk-auth").start();
    pg.psql(
        "postgres",
        "set password_encryption = 'scram-sha-256'; create role scram_user login replication password 'sécret pw'; \
         set password_encryption = 'md5'; create role md5_user login replication password 'md5 pw'",
    );
    // First match wins: put password rules before the test kit's trust lines.
    let hba = pg.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host replication scram_user 127.0.0.1/32 scram-sha-256\n\
             local replication scram_user scram-sha-256\n\
             host replication md5_user 127.0.0.1/32 md5\n{old}"
        ),
    )
    .unwrap();
    pg.reload();
    pg
}

fn params(pg: &PgCluster, host: &str, user: &str, password: Option<&str>) -> ConnParams {
    let mut p = ConnParams::from_lookup(|_| None)
        .apply_conninfo(&format!("host={host} port={} user={user}", pg.port()))
        .unwrap();
    p.password = password.map(str::to_string);
    p
}

#[tokio::test]
async fn backup_client_authenticates_with_scram_and_md5() {
    let pg = with_auth();
    let sysid = pg.psql(
        "postgres",
        "select system_identifier from pg_control_system()",
    );
    let socket = pg.socket_dir().display().to_string();
    for (host, user, pw) in [
        ("127.0.0.1", "scram_user", "sécret pw"),
        (socket.as_str(), "scram_user", "sécret pw"),
        ("127.0.0.1", "md5_user", "md5 pw"),
    ] {
        let mut c = ReplicationConnection::connect(&params(&pg, host, user, Some(pw)))
            .await
            .unwrap_or_else(|e| panic!("{user} via {host}: {e}"));
        let id = c.identify_system().await.unwrap();
        assert_eq!(id.system_identifier.to_string(), sysid);
        assert_eq!(c.server_version_num().map(|v| v / 10000), Some(15));
        c.close().await.unwrap();
    }
    for (user, pw) in [
        ("scram_user", Some("wrong")),
        ("md5_user", Some("wrong")),
        ("scram_user", None),
    ] {
        let err = ReplicationConnection::connect(&params(&pg, "127.0.0.1", user, pw))
            .await
            .expect_err("wrong password accepted");
        let msg = err.to_string();
        assert!(
            msg.contains("password authentication failed")
                || msg.contains("PGPASSWORD")
                || msg.contains("SCRAM"),
            "{user}: {msg}"
        );
    }
}
