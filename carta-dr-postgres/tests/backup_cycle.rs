//! Full cycle on a real PostgreSQL 15: backup under pgbench load into a local store, restore,
//! start, and compare every table at the recovery point; pg_amcheck passes.

mod backup_support;

use std::time::Duration;

use backup_support::*;
use carta_dr_core::catalog::Content;
use carta_dr_core::traits::BackupRequest;
use carta_dr_postgres::restore::{
    restore, BackupSelector, RecoveryTarget, RestoreOptions, TargetAction,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_load_restores_identical_tables() {
    let env = Env::new("bk-cycle");
    let init = env
        .pg
        .command("pgbench")
        .args(["-i", "-s", "5", "-q"])
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    env.pg.psql(
        "postgres",
        "create table big as select g, md5(g::text) m from generate_series(1, 200000) g",
    );
    let mut load = env
        .pg
        .command("pgbench")
        .args(["-c", "2", "-T", "20", "-n"])
        .spawn()
        .expect("pgbench load");

    let repo = env.repo();
    let rec = env
        .backup(repo.clone())
        .run_record(&BackupRequest {
            label: "cycle".into(),
            fast_checkpoint: true,
            resume: None,
        })
        .await
        .expect("backup");
    assert!(rec.stop_lsn > rec.start_lsn);
    assert!(rec
        .files
        .iter()
        .any(|f| matches!(f.content, Content::Chunks { .. })));
    assert!(rec
        .files
        .iter()
        .any(|f| matches!(f.content, Content::Bundled { .. })));
    assert_eq!(repo.list_ids().await.unwrap(), vec![rec.id]);

    let _ = load.wait();
    let want = table_digests(&env.pg, "postgres");
    env.archive_now();

    let (mut target, settings) = empty_target("bk-cycle-restore");
    let report = restore(
        &repo,
        &RestoreOptions {
            target_dir: target.data_dir().to_path_buf(),
            backup: BackupSelector::Latest,
            target: RecoveryTarget::EndOfWal,
            action: Some(TargetAction::Promote),
            standby: false,
            delta: false,
            restore_command: Some(env.restore_command()),
            extra_settings: settings,
            concurrency: 4,
        },
    )
    .await
    .expect("restore");
    assert!(report.files_written > 100);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(target.data_dir()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
    chown_tree(target.data_dir());
    target.start();
    target.wait_until("recovery finished", Duration::from_secs(120), || {
        target
            .try_psql("postgres", "select pg_is_in_recovery()")
            .ok()
            .as_deref()
            == Some("f")
    });
    assert_eq!(table_digests(&target, "postgres"), want);
    amcheck(&target);
}
