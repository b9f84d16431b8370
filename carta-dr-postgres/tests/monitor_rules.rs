//! The generated rules and Alertmanager fragment, checked by the real tools:
//! `promtool check rules`, `promtool test rules` on the unit tests in `rules-tests/`,
//! `amtool check-config`, and a running Alertmanager showing inhibited alerts stay quiet
//! while their root cause fires.

mod monitor_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use carta_dr_postgres::monitor::rules::{
    self, alertmanager_fragment, alertmanager_full_config, names, Rule,
};
use carta_dr_postgres::monitor::MonitorConfig;
use monitor_support::{http, run, wait_for, KillOnDrop};
use serde_yaml::Value;

fn rules_tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules-tests")
}

fn generate(dir: &Path) -> MonitorConfig {
    let config = MonitorConfig::default();
    rules::write_all(&config, dir).expect("writing the rules");
    config
}

#[test]
fn generated_rules_pass_promtool_check_rules() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let (ok, out) = run(Command::new(monitor_support::promtool())
        .args(["check", "rules", "replication.yml", "slo.yml"])
        .current_dir(dir.path()));
    assert!(ok, "promtool check rules failed:\n{out}");
    // Lint findings do not change promtool's exit status: look at its report too.
    assert!(
        out.contains("SUCCESS") && !out.contains("FAILED") && !out.contains("lint"),
        "promtool check rules:\n{out}"
    );
}

/// Fills every `exp_alerts` entry's `exp_annotations` from the generated rule it refers to
/// (same alert name, and every label of the rule present in `exp_labels`), expanding
/// `{{ $labels.X }}` from `exp_labels`. promtool compares annotations exactly; this keeps the
/// fixtures about when alerts fire, while still checking the annotation templates.
fn fill_annotations(test: &mut Value, config: &MonitorConfig) {
    let mut alerts = Vec::new();
    for file in [rules::replication_rules(config), rules::slo_rules(config)] {
        for g in file.groups {
            for r in g.rules {
                if let Rule::Alert(a) = r {
                    alerts.push(a);
                }
            }
        }
    }
    let tests = test["tests"].as_sequence_mut().expect("tests");
    for t in tests {
        let Some(art) = t
            .get_mut("alert_rule_test")
            .and_then(Value::as_sequence_mut)
        else {
            continue;
        };
        for case in art {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            let Some(exps) = case.get_mut("exp_alerts").and_then(Value::as_sequence_mut) else {
                continue;
            };
            for exp in exps {
                let labels: BTreeMap<String, String> =
                    serde_yaml::from_value(exp["exp_labels"].clone()).expect("exp_labels");
                let rule = alerts
                    .iter()
                    .find(|a| {
                        a.alert == name && a.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
                    })
                    .unwrap_or_else(|| panic!("no generated rule {name} matches {labels:?}"));
                let mut ann = serde_yaml::Mapping::new();
                for (k, v) in &rule.annotations {
                    let mut text = v.clone();
                    for (lk, lv) in &labels {
                        text = text.replace(&format!("{{{{ $labels.{lk} }}}}"), lv);
                    }
                    assert!(
                        !text.contains("{{"),
                        "unexpanded template in {name}: {text}"
                    );
                    ann.insert(Value::from(k.as_str()), Value::from(text));
                }
                if let Some(m) = exp.as_mapping_mut() {
                    m.insert(Value::from("exp_annotations"), Value::Mapping(ann));
                }
            }
        }
    }
}

fn promtool_test(file: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = generate(dir.path());
    let src = rules_tests_dir().join(file);
    let text =
        std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
    let mut test: Value = serde_yaml::from_str(&text).expect("parsing the promtool test file");
    fill_annotations(&mut test, &config);
    let dst = dir.path().join(file);
    std::fs::write(&dst, serde_yaml::to_string(&test).unwrap()).unwrap();
    let (ok, out) = run(Command::new(monitor_support::promtool())
        .args(["test", "rules", file])
        .current_dir(dir.path()));
    assert!(ok, "promtool test rules {file} failed:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn replication_alerts_fire_and_resolve() {
    promtool_test("replication.test.yml");
}

#[test]
fn staleness_alerts_fire_after_their_horizon() {
    promtool_test("staleness.test.yml");
}

#[test]
fn burn_rate_alerts_fire_at_the_right_budget_consumption() {
    promtool_test("slo.test.yml");
}

fn write_full_am_config(dir: &Path) -> PathBuf {
    let full = alertmanager_full_config(&alertmanager_fragment());
    let path = dir.join("alertmanager-full.yml");
    std::fs::write(&path, rules::to_yaml(&full, "test configuration").unwrap()).unwrap();
    path
}

#[test]
fn alertmanager_fragment_passes_amtool_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_full_am_config(dir.path());
    let (ok, out) = run(Command::new(monitor_support::amtool())
        .arg("check-config")
        .arg(&path));
    assert!(ok, "amtool check-config failed:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

fn am_alert(labels: &[(&str, &str)], ends_in_past: bool) -> serde_json::Value {
    let mut l = serde_json::Map::new();
    for (k, v) in labels {
        l.insert((*k).into(), (*v).into());
    }
    let mut a = serde_json::json!({ "labels": l, "annotations": {} });
    if ends_in_past {
        a["endsAt"] = "2000-01-01T00:00:00Z".into();
    }
    a
}

/// The state (`active`, `suppressed`) and inhibiting fingerprints of every alert, by
/// `alertname/cluster/severity`.
fn am_states(addr: &str) -> Option<BTreeMap<String, (String, usize)>> {
    let (status, body) = http("GET", addr, "/api/v2/alerts", None).ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut out = BTreeMap::new();
    for a in v.as_array()? {
        let l = &a["labels"];
        let key = format!(
            "{}/{}/{}",
            l["alertname"].as_str()?,
            l["cluster"].as_str()?,
            l["severity"].as_str()?
        );
        let state = a["status"]["state"].as_str()?.to_string();
        let by = a["status"]["inhibitedBy"].as_array().map_or(0, Vec::len);
        out.insert(key, (state, by));
    }
    Some(out)
}

#[test]
fn alertmanager_keeps_consequences_quiet_while_the_primary_is_down() {
    let bin = monitor_support::require_tool(
        "prometheus-alertmanager",
        "apt-get install -y prometheus-alertmanager",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_full_am_config(dir.path());
    let port = monitor_support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _am = KillOnDrop(
        Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus-alertmanager"),
    );
    wait_for("alertmanager ready", Duration::from_secs(30), || {
        http("GET", &addr, "/-/ready", None)
            .ok()
            .filter(|(s, _)| *s == 200)
    });

    let with = |name: &str, cluster: &str, sev: &str, extra: &[(&str, &str)]| {
        let mut l = vec![("alertname", name), ("cluster", cluster), ("severity", sev)];
        l.extend_from_slice(extra);
        l.into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    let consequences = [
        with(
            names::REPLICATION_LAG,
            "prod",
            "page",
            &[("application_name", "s1")],
        ),
        with(
            names::REPLICA_DOWN,
            "prod",
            "page",
            &[("application_name", "s1")],
        ),
        with(names::WAL_ARCHIVE_STALE, "prod", "page", &[]),
        with(names::BACKUP_STALE, "prod", "ticket", &[]),
        with(
            names::SLOT_INACTIVE,
            "prod",
            "ticket",
            &[("slot_name", "s1")],
        ),
        with(
            names::BURN_1H,
            "prod",
            "page",
            &[("slo", "replication_lag"), ("window", "1h/5m")],
        ),
    ];
    let root = with(names::PRIMARY_DOWN, "prod", "page", &[]);
    // The same symptom on another cluster, whose primary is fine, must not be inhibited.
    let other = with(
        names::REPLICATION_LAG,
        "other",
        "page",
        &[("application_name", "s1")],
    );

    let post = |alerts: &[Vec<(String, String)>], ended: bool| {
        let body: Vec<serde_json::Value> = alerts
            .iter()
            .map(|l| {
                let refs: Vec<(&str, &str)> =
                    l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                am_alert(&refs, ended)
            })
            .collect();
        let (status, text) = http(
            "POST",
            &addr,
            "/api/v2/alerts",
            Some(&serde_json::to_string(&body).unwrap()),
        )
        .expect("posting alerts");
        assert_eq!(status, 200, "POST /api/v2/alerts: {text}");
    };
    let key = |l: &[(String, String)]| {
        let get = |k: &str| {
            l.iter()
                .find(|(kk, _)| kk == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        format!(
            "{}/{}/{}",
            get("alertname"),
            get("cluster"),
            get("severity")
        )
    };

    let mut all = consequences.to_vec();
    all.push(root.clone());
    all.push(other.clone());
    post(&all, false);

    let states = wait_for(
        "consequences suppressed by CartaDrPrimaryDown",
        Duration::from_secs(30),
        || {
            let s = am_states(&addr)?;
            let ok = consequences.iter().all(|c| {
                s.get(&key(c))
                    .is_some_and(|(st, by)| st == "suppressed" && *by > 0)
            });
            ok.then_some(s)
        },
    );
    assert_eq!(states[&key(&root)].0, "active", "{states:?}");
    assert_eq!(states[&key(&other)].0, "active", "{states:?}");

    // The primary comes back: what it caused alone is no longer inhibited, while the lag
    // alerts stay quiet because their own root cause, the replica being down, still fires.
    post(std::slice::from_ref(&root), true);
    let lag_like = [&consequences[0], &consequences[5]];
    wait_for(
        "primary-only consequences active, lag still inhibited by the replica down",
        Duration::from_secs(30),
        || {
            let s = am_states(&addr)?;
            let freed = consequences[1..5]
                .iter()
                .all(|c| s.get(&key(c)).is_some_and(|(st, _)| st == "active"));
            let held = lag_like.iter().all(|c| {
                s.get(&key(c))
                    .is_some_and(|(st, by)| st == "suppressed" && *by > 0)
            });
            (freed && held).then_some(())
        },
    );
    // The replica recovers too: the lag alerts (still firing) are shown.
    post(std::slice::from_ref(&consequences[1]), true);
    wait_for(
        "lag alerts active once nothing inhibits them",
        Duration::from_secs(30),
        || {
            let s = am_states(&addr)?;
            lag_like
                .iter()
                .all(|c| s.get(&key(c)).is_some_and(|(st, _)| st == "active"))
                .then_some(())
        },
    );
}
