//! `culvert bench`: the loopback run every CI does (every figure present and positive, no
//! assertion on speed), a live tunnel whose agent serves `bench_service` from its config
//! file, and a clear error when the target is no bench service.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// Bound of one bench run: 14 measurements of `--duration 1` plus set-up and drains, on a
/// busy CI machine running a debug build.
const BENCH_LIMIT: Duration = Duration::from_secs(240);

/// Figures that may be 0 (failures, loss); every other number must be above 0.
const MAY_BE_ZERO: [&str; 3] = ["failed", "lost", "loss_pct"];

/// Checks every number under `v` (a side's results) is present and positive.
fn all_positive(path: &str, v: &Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if let Value::Number(n) = x {
                    let f = n.as_f64().expect("a number");
                    if MAY_BE_ZERO.contains(&k.as_str()) {
                        assert!(f >= 0.0, "{path}.{k} = {f}");
                    } else {
                        assert!(f > 0.0 && f.is_finite(), "{path}.{k} = {f}");
                    }
                } else {
                    all_positive(&format!("{path}.{k}"), x);
                }
            }
        }
        other => panic!("{path}: expected an object, got {other}"),
    }
}

/// Runs `culvert bench` with `args`, expecting success and JSON on stdout.
fn bench_json(args: &[&str]) -> Value {
    let out = run(culvert().arg("bench").args(args), BENCH_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "culvert bench {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"))
}

const SECTIONS: [&str; 6] = [
    "upload_1",
    "upload_n",
    "download_1",
    "download_n",
    "latency",
    "connections",
];

#[test]
fn loopback_bench_reports_every_figure() {
    let v = bench_json(&["--loopback", "--duration", "1", "--json"]);
    assert_eq!(v["mode"], "loopback");
    let keys: Vec<&str> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["key"].as_str().expect("key"))
        .collect();
    assert_eq!(
        keys,
        [
            "upload_1",
            "upload_n",
            "download_1",
            "download_n",
            "latency_p50",
            "latency_p99",
            "latency_p999",
            "connections",
            "udp",
            "udp_loss"
        ]
    );
    for row in v["rows"].as_array().unwrap() {
        for col in ["tunnel", "direct"] {
            let x = row[col]
                .as_f64()
                .unwrap_or_else(|| panic!("{col} missing in {row}"));
            if row["key"] == "udp_loss" {
                assert!(x >= 0.0, "{row}");
            } else {
                assert!(x > 0.0, "{row}");
            }
        }
    }
    for side in ["tunnel", "direct"] {
        for section in SECTIONS.iter().chain(&["udp"]) {
            assert!(
                v[side][section].is_object(),
                "{side}.{section} missing: {v}"
            );
        }
        all_positive(side, &v[side]);
    }
}

#[test]
fn bench_service_of_a_live_agent_from_its_config_file() {
    let dir = TempDir::new("bench");
    let tokens = dir.join("tokens.toml");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, new_token(&tokens, "bench")).unwrap();
    let (_server, port) = start_server(&tokens, &["--insecure-plain"]);
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nserver = \"ws://127.0.0.1:{port}\"\ntoken_file = {:?}\nbench_service = \"perf\"\n",
            token_file.display().to_string()
        ),
    )
    .unwrap();
    let mut agent = Proc::spawn(
        "culvert agent",
        culvert().arg("agent").arg("--config").arg(&config),
    );
    let tcp = public_port_of(&mut agent, "perf", 0);
    let udp = public_port_of(&mut agent, "perf-udp", 0);
    let (tcp, udp) = (format!("127.0.0.1:{tcp}"), format!("127.0.0.1:{udp}"));
    let v = bench_json(&[
        "--target",
        &tcp,
        "--udp-target",
        &udp,
        "--duration",
        "0.3",
        "--streams",
        "2",
        "--clients",
        "2",
        "--json",
    ]);
    assert_eq!(v["mode"], "target");
    assert!(v["direct"].is_null(), "no baseline asked: {v}");
    assert_eq!(v["rows"].as_array().unwrap().len(), 10);
    for section in SECTIONS.iter().chain(&["udp"]) {
        assert!(v["tunnel"][section].is_object(), "{section} missing: {v}");
    }
    all_positive("tunnel", &v["tunnel"]);
}

#[test]
fn a_target_that_is_no_bench_service_is_a_clear_error() {
    // A plain echo service answers the probe's byte with the mode byte `E`, not `x`.
    let echo = echo_service();
    let refused = free_port();
    for (target, why) in [
        (format!("127.0.0.1:{echo}"), "echoed byte differs"),
        (format!("127.0.0.1:{refused}"), "refused"),
    ] {
        let out = run(
            culvert().args([
                "bench",
                "--target",
                &target,
                "--duration",
                "0.2",
                "--timeout",
                "5",
            ]),
            BENCH_LIMIT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{target}: {stderr}");
        assert!(
            stderr.contains(&format!("no bench service answered at --target {target}"))
                && stderr.contains(why),
            "{target}: {stderr}"
        );
    }
}
