//! A private nginx (its own prefix, config and free port; never the
//! system's) configured from the shipped example `etc/nginx/sse-notify.conf`:
//! its locations and upstreams are cut out of the example and only the
//! upstream addresses are rewritten, so the tests check the file a
//! sysadmin copies.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

const EXAMPLE: &str = "etc/nginx/sse-notify.conf";
const STREAM_LOCATION: &str = "location /notifications/stream/";

/// The nginx binary: on PATH (or in the sbin directories a non-root PATH
/// may lack). Panics when there is none: this test must not pass silently.
pub fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed (not on PATH, nor in /usr/sbin): this test needs a real \
                 nginx; install it with `apt-get install nginx` (.ci/run does)"
            )
        })
}

// ---------------------------------------------------------------------------
// Cutting the example apart.

/// The text without `#` comments (the example has no `#` inside strings).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The block `header { ... }` (braces balanced), header included.
fn block(conf: &str, header: &str) -> String {
    let mut from = 0;
    while let Some(i) = conf[from..].find(header).map(|i| i + from) {
        let after = &conf[i + header.len()..];
        let gap = after.len() - after.trim_start().len();
        if after.trim_start().starts_with('{') {
            let open = i + header.len() + gap;
            let mut depth = 0;
            for (j, c) in conf[open..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            return conf[i..=open + j].to_string();
                        }
                    }
                    _ => {}
                }
            }
            panic!("{EXAMPLE}: unbalanced braces after `{header}`");
        }
        from = i + header.len();
    }
    panic!("{EXAMPLE}: no `{header} {{ ... }}` block");
}

/// The argument of the one `directive` in `block` (up to the `;`).
fn directive<'a>(block: &'a str, directive: &str) -> &'a str {
    let found: Vec<&str> = block
        .lines()
        .filter_map(|l| l.trim().strip_prefix(directive))
        .filter(|rest| rest.starts_with(char::is_whitespace))
        .map(|rest| rest.trim().trim_end_matches(';').trim())
        .collect();
    assert_eq!(found.len(), 1, "one `{directive}` expected in:\n{block}");
    found[0]
}

/// The upstream name in `proxy_pass http://NAME[/uri]`.
fn upstream_name(proxy_pass: &str) -> &str {
    let rest = proxy_pass
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("proxy_pass {proxy_pass}: expected http://UPSTREAM"));
    rest.split('/').next().unwrap()
}

/// `upstream NAME { server ...; ... }` with its one server replaced by `addr`.
fn rewritten_upstream(conf: &str, name: &str, addr: SocketAddr) -> String {
    let original = block(conf, &format!("upstream {name}"));
    let mut servers = 0;
    let text = original
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("server ") {
                servers += 1;
                format!("    server {addr};")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(servers, 1, "one server expected in:\n{original}");
    text
}

/// A complete nginx.conf: the example's stream and auth locations and its
/// upstreams, in a plain-HTTP server on `listen`, everything else in `dir`.
fn nginx_conf(
    dir: &Path,
    listen: SocketAddr,
    sse: SocketAddr,
    app: SocketAddr,
    site: bool,
) -> String {
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE))
        .unwrap_or_else(|e| panic!("read {EXAMPLE}: {e}"));
    let conf = strip_comments(&example);

    let stream = block(&conf, STREAM_LOCATION);
    let sse_upstream = upstream_name(directive(&stream, "proxy_pass"));
    let auth_uri = directive(&stream, "auth_request");
    let auth = block(&conf, &format!("location = {auth_uri}"));
    let app_upstream = upstream_name(directive(&auth, "proxy_pass"));
    assert_ne!(sse_upstream, app_upstream);
    // The rest of the site (`location /`), proxied to the same app.
    let site_location = if site {
        let location = block(&conf, "location /");
        assert_eq!(
            upstream_name(directive(&location, "proxy_pass")),
            app_upstream,
            "{EXAMPLE}: `location /` goes to the app"
        );
        location
    } else {
        String::new()
    };

    let d = dir.display();
    format!(
        "# generated by tests/nginx.rs from {EXAMPLE}\n\
         daemon off;\n\
         master_process off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         access_log {d}/access.log;\n\
         client_body_temp_path {d}/client_body;\n\
         proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n\
         scgi_temp_path {d}/scgi;\n\
         {}\n{}\n\
         server {{\n\
         listen {listen};\n\
         server_name localhost;\n\
         {stream}\n{auth}\n{site_location}\n\
         }}\n\
         }}\n",
        rewritten_upstream(&conf, sse_upstream, sse),
        rewritten_upstream(&conf, app_upstream, app),
    )
}

// ---------------------------------------------------------------------------
// A real nginx.

pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// The example's stream and auth locations, towards the daemon's public
    /// listener `sse` and the app (or its stand-in) at `app`.
    pub fn start(sse: SocketAddr, app: SocketAddr) -> Nginx {
        Self::start_with(sse, app, false)
    }

    /// [`Nginx::start`] with the example's `location /` too: the whole site
    /// (pages, login, static files) through nginx.
    pub fn start_site(sse: SocketAddr, app: SocketAddr) -> Nginx {
        Self::start_with(sse, app, true)
    }

    fn start_with(sse: SocketAddr, app: SocketAddr, site: bool) -> Nginx {
        let bin = nginx_binary();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, nginx_conf(dir.path(), listen, sse, app, site)).unwrap();
        let out = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut nginx = Nginx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(listen).is_ok() {
                return nginx;
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", nginx.logs());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {listen}:\n{}",
                nginx.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// nginx's access log so far (the combined format: one line per
    /// request, with its status).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- nginx.conf\n{}\n--- stderr\n{}\n--- error.log\n{}",
            read("nginx.conf"),
            read("stderr.log"),
            read("error.log")
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // master_process off: one process, nothing left behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
