//! The Django side: the `sse-notify` Python package of `clients/python`
//! (the admin API client and its async twins, the Django app's commands,
//! checks and views, its HTTP/1.1 transport), driven by its own tests under
//! Django's test runner against the real binary, on both engines.
mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn python_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python"))
}

/// The daemons one run of the suite talks to, as its environment names
/// them.
struct Daemons {
    /// `SSE_NOTIFY_URL`: `http://...` or `unix:///...`.
    admin_url: String,
    stream_url: String,
    /// The admin URL of the daemon that requires [`TOKEN`].
    guarded_url: String,
    cli_config: String,
}

const TOKEN: &str = "django-test-token";
/// Heartbeats far apart, so that no heartbeat writes records back while a
/// test checks what a cleanup removed.
const QUIET: &str = "[stream]\nheartbeat_secs = 60\n\n[sweep]\nstale_timeout_secs = 300\n";

fn guarded_extra() -> String {
    format!("[startup]\nclear = false\n\n[api]\ntoken = \"{TOKEN}\"\n")
}

/// `python3 runtests.py` against `daemons`; asserts it passed, skipped
/// nothing and ran the whole suite.
async fn run_suite(env: &Env, over: &str, daemons: Daemons, daemon_log: impl Fn() -> String) {
    let mut cmd = Command::new("python3");
    cmd.arg("runtests.py")
        .current_dir(python_dir())
        // The working tree's package, not an installed copy.
        .env("PYTHONPATH", python_dir().join("src"))
        .env("SSE_NOTIFY_URL", &daemons.admin_url)
        .env("SSE_STREAM_URL", &daemons.stream_url)
        .env("SSE_TOKEN_NODE_URL", &daemons.guarded_url)
        .env("SSE_TOKEN_NODE_TOKEN", TOKEN)
        .env("SSE_NOTIFY_BIN", bin())
        .env("SSE_NOTIFY_CLI_CONFIG", &daemons.cli_config)
        .env("SSE_REDIS_URL", env.url())
        .env_remove("SSE_NOTIFY_BASE_PATH")
        .env_remove("SSE_NOTIFY_TOKEN")
        .env_remove("SSE_NOTIFY_TIMEOUT")
        .env_remove("DJANGO_SETTINGS_MODULE")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("python thread")
        .expect("python3 must be installed (tests/setup.sh)");

    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!(
        "python3 runtests.py ({}, admin API over {over}): {}\n--- stdout\n{}\n--- stderr\n{stderr}\n--- sse-notify log\n{}",
        env.engine(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        daemon_log()
    );
    println!("{stderr}");
    assert!(out.status.success(), "{report}");
    // Django's runner reports on stderr: it ran the tests, none skipped
    // (a skip would hide a missing environment).
    assert!(stderr.contains("\nOK"), "{report}");
    assert!(!stderr.contains("skipped"), "{report}");
    let ran = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split(' ')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or(0);
    assert!(ran >= 45, "only {ran} Python tests ran\n{report}");
}

on_every_engine! {
    async fn python_package_against_the_real_daemon(env: Env) {
        let node = BinaryNode::on(&env, QUIET).await;
        // A second daemon that requires the admin token.
        let guarded = BinaryNode::on(&env, &guarded_extra()).await;
        let daemons = Daemons {
            admin_url: node.admin_url(""),
            stream_url: node.stream_url(),
            guarded_url: guarded.admin_url(""),
            cli_config: node.cli_config(),
        };
        run_suite(&env, "TCP", daemons, || node.log()).await;
    }

    /// The same suite with both daemons' admin listeners on Unix sockets
    /// (`SSE_NOTIFY_URL = "unix:///..."`): every call, command and check
    /// of the package over the socket.
    async fn python_package_over_the_unix_socket(env: Env) {
        let node = UnixNode::start(&env, QUIET).await;
        let guarded = UnixNode::start(&env, &guarded_extra()).await;
        let daemons = Daemons {
            admin_url: node.admin_url(),
            stream_url: node.stream_url(),
            guarded_url: guarded.admin_url(),
            cli_config: node.config.to_string_lossy().into_owned(),
        };
        run_suite(&env, "a Unix socket", daemons, || node.log()).await;
    }
}

/// Runs `program args` in `dir`; its stdout, or a panic with everything it
/// said.
fn run_ok(program: &str, args: &[&str], dir: &Path, envs: &[(&str, &str)]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env_remove("PYTHONPATH")
        .env_remove("DJANGO_SETTINGS_MODULE")
        .envs(envs.iter().copied())
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (tests/setup.sh installs it)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// What a site does: `pip wheel` / `pip install` of clients/python (offline:
/// no build isolation), then the installed package, away from the source
/// tree, holds its static file and commands and talks to a real daemon.
#[tokio::test(flavor = "multi_thread")]
async fn the_wheel_builds_installs_and_serves() {
    let node = BinaryNode::on(&Env::memory(), "").await;
    let admin = node.admin_url("");
    tokio::task::spawn_blocking(move || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = tmp.path();
        // A copy: building in place would leave build/ and *.egg-info in the
        // working tree.
        let src = t.join("pkg");
        run_ok("cp", &["-a", python_dir().to_str().unwrap(), src.to_str().unwrap()], t, &[]);
        run_ok(
            "python3",
            &["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "./pkg"],
            t,
            &[],
        );
        let wheels: Vec<_> = std::fs::read_dir(t.join("dist"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(wheels.len(), 1, "one wheel: {wheels:?}");
        let wheel = wheels[0].to_str().unwrap().to_string();
        assert!(wheel.contains("sse_notify-0.1.0-py3-none-any.whl"), "{wheel}");
        let listing = run_ok(
            "python3",
            &["-c", "import sys, zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))", &wheel],
            t,
            &[],
        );
        for file in [
            "sse_notify/__init__.py",
            "sse_notify/_transport.py",
            "sse_notify/apps.py",
            "sse_notify/checks.py",
            "sse_notify/urls.py",
            "sse_notify/static/sse_notify/sse-notify.js",
            "sse_notify/management/commands/cleanup_sse_connections.py",
            "sse_notify/management/commands/clear_all_sse_connections.py",
            "sse_notify/management/commands/sse_connections.py",
            "sse_notify/py.typed",
        ] {
            assert!(listing.lines().any(|l| l == file), "{file} not in the wheel:\n{listing}");
        }
        assert!(!listing.contains("tests/"), "the wheel ships the tests:\n{listing}");

        // A virtualenv of its own (Django from the system's packages).
        run_ok("python3", &["-m", "venv", "--system-site-packages", "--without-pip", "venv"], t, &[]);
        let python = t.join("venv/bin/python");
        let python = python.to_str().unwrap();
        run_ok(
            "python3",
            &["-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", &wheel],
            t,
            &[],
        );
        std::fs::write(
            t.join("site_settings.py"),
            "SECRET_KEY = 'x'\nINSTALLED_APPS = ['django.contrib.auth', 'django.contrib.contenttypes', \
             'django.contrib.staticfiles', 'sse_notify']\nSTATIC_URL = '/static/'\n",
        )
        .unwrap();
        let envs = [("SSE_NOTIFY_URL", admin.as_str()), ("DJANGO_SETTINGS_MODULE", "site_settings"), ("PYTHONPATH", ".")];
        let sent = run_ok(
            python,
            &[
                "-c",
                "import sse_notify, sys; assert '/venv/' in sse_notify.__file__, sse_notify.__file__; \
                 print(sse_notify.send_notification('wheel-user', {'from': 'the wheel'})['to'])",
            ],
            t,
            &envs[..1],
        );
        assert_eq!(sent.trim(), "wheel-user");
        let envs = [envs[0], envs[1], ("PYTHONPATH", t.to_str().unwrap())];
        let check = run_ok(python, &["-m", "django", "check"], t, &envs);
        assert!(check.contains("no issues"), "{check}");
        let listed = run_ok(python, &["-m", "django", "sse_connections"], t, &envs);
        assert_eq!(listed.trim(), "0 connections of 0 users");
        let found = run_ok(python, &["-m", "django", "findstatic", "sse_notify/sse-notify.js"], t, &envs);
        assert!(found.contains("/venv/") && found.contains("sse-notify.js"), "{found}");
    })
    .await
    .expect("wheel test thread");
}
