//! `[server]`: the two listeners (the admin one may be a Unix socket, with
//! its file's mode and group), the route prefix, the node's name, shutdown
//! grace and worker threads.

use serde::{Deserialize, Serialize};

use super::addr::{parse_addr, parse_listen, ListenAddr};
use super::reload::{restart, Key};
use super::{invalid, ConfigError};

const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8091";
/// Owner and group read and write: connecting to a Unix socket needs write
/// permission on its file, so this lets in the daemon's user and the
/// members of the file's group, nobody else.
const DEFAULT_ADMIN_SOCKET_MODE: &str = "0660";
const DEFAULT_BASE_PATH: &str = "/notifications";
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// One per CPU core.
const DEFAULT_WORKER_THREADS: usize = 0;
/// More threads than any machine this runs on has cores; a larger value
/// is a typo.
const MAX_WORKER_THREADS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub admin_listen: String,
    /// Octal permissions of the admin socket file (Unix socket only).
    pub admin_socket_mode: String,
    /// Group of the admin socket file; empty: the daemon's own group.
    pub admin_socket_group: String,
    pub base_path: String,
    /// Empty: the hostname.
    pub node_id: String,
    pub shutdown_grace_secs: u64,
    /// Threads running the node; 0 means one per CPU core.
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            admin_socket_mode: DEFAULT_ADMIN_SOCKET_MODE.into(),
            admin_socket_group: String::new(),
            base_path: DEFAULT_BASE_PATH.into(),
            node_id: String::new(),
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
            worker_threads: DEFAULT_WORKER_THREADS,
        }
    }
}

impl ServerConfig {
    /// All need a restart: the listeners are bound, the routes built, the
    /// node named in the registry and the runtime sized at start.
    pub(super) const KEYS: &'static [Key] = &[
        restart!(server.listen),
        restart!(server.admin_listen),
        restart!(server.admin_socket_mode),
        restart!(server.admin_socket_group),
        restart!(server.base_path),
        restart!(server.node_id),
        restart!(server.shutdown_grace_secs),
        restart!(server.worker_threads),
    ];

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("server.listen", &self.listen)?;
        let admin = parse_listen("server.admin_listen", &self.admin_listen)?;
        self.admin_socket_mode()?;
        if matches!(admin, ListenAddr::Unix(_)) {
            self.admin_socket_gid()?;
        }
        let base = &self.base_path;
        if !base.is_empty()
            && (!base.starts_with('/') || base.ends_with('/') || base.contains(['?', '#', ' ']))
        {
            return Err(invalid(
                "server.base_path",
                format!("{base:?} must start with '/' and not end with '/' (e.g. \"/notifications\", or \"\" for the root)"),
            ));
        }
        if self.shutdown_grace_secs == 0 {
            return Err(invalid("server.shutdown_grace_secs", "must be at least 1"));
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(invalid(
                "server.worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0 = one per CPU core)"),
            ));
        }
        if self.node_id.chars().any(|c| c.is_control()) {
            return Err(invalid(
                "server.node_id",
                "must not contain control characters",
            ));
        }
        Ok(())
    }

    /// `server.admin_listen`: a TCP address or a Unix socket file.
    pub(crate) fn admin_listen(&self) -> Result<ListenAddr, ConfigError> {
        parse_listen("server.admin_listen", &self.admin_listen)
    }

    /// `server.admin_socket_mode` as permission bits: three or four octal
    /// digits, no set-id or sticky bits (they mean nothing on a socket).
    pub(crate) fn admin_socket_mode(&self) -> Result<u32, ConfigError> {
        let value = &self.admin_socket_mode;
        let digits = value
            .strip_prefix('0')
            .filter(|d| d.len() == 3)
            .unwrap_or(value);
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(mode),
            _ => Err(invalid(
                "server.admin_socket_mode",
                format!(
                    "{value:?} is not an octal mode like \"0660\" (owner and group read and write)"
                ),
            )),
        }
    }

    /// The group id of `server.admin_socket_group`, `None` when empty (the
    /// file keeps the daemon's group). A group this host does not know is
    /// an error naming the key.
    pub(crate) fn admin_socket_gid(&self) -> Result<Option<u32>, ConfigError> {
        let name = &self.admin_socket_group;
        if name.is_empty() {
            return Ok(None);
        }
        match group_id(name) {
            Ok(Some(gid)) => Ok(Some(gid)),
            Ok(None) => Err(invalid(
                "server.admin_socket_group",
                format!("no group {name:?} on this host"),
            )),
            Err(e) => Err(invalid(
                "server.admin_socket_group",
                format!("cannot look up group {name:?}: {e}"),
            )),
        }
    }

    /// `server.node_id`, or the hostname when empty.
    pub(super) fn node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "sse-notify".into())
    }
}

/// The id of group `name` (getgrnam_r), `None` when there is no such group.
fn group_id(name: &str) -> std::io::Result<Option<u32>> {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: getgrnam_r writes the entry into `group` and the strings
        // it points to into `buf`, both ours and alive for the call; only
        // gr_gid is read afterwards.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut group,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Ok(None),
            0 => return Ok(Some(group.gr_gid)),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            libc::ENOENT | libc::ESRCH => return Ok(None),
            rc => return Err(std::io::Error::from_raw_os_error(rc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(mode: &str, group: &str) -> ServerConfig {
        ServerConfig {
            admin_listen: "unix:/run/sse-notify/admin.sock".into(),
            admin_socket_mode: mode.into(),
            admin_socket_group: group.into(),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn socket_mode_is_an_octal_string() {
        for (mode, bits) in [
            ("0660", 0o660),
            ("660", 0o660),
            ("0600", 0o600),
            ("0777", 0o777),
        ] {
            assert_eq!(with(mode, "").admin_socket_mode().unwrap(), bits, "{mode}");
        }
        for bad in [
            "",
            "0",
            "66",
            "0680",
            "4660",
            "06600",
            "rw-rw----",
            "0x1b4",
            "+660",
        ] {
            let e = with(bad, "").validate().unwrap_err().to_string();
            assert!(e.contains("server.admin_socket_mode"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn socket_group_must_exist() {
        // root's group exists everywhere this runs.
        assert_eq!(with("0660", "root").admin_socket_gid().unwrap(), Some(0));
        assert_eq!(with("0660", "").admin_socket_gid().unwrap(), None);
        let e = with("0660", "no-such-group-sse")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.admin_socket_group") && e.contains("no-such-group-sse"),
            "{e}"
        );
        // Over TCP the group is never used, so a config shared by hosts
        // without it stays valid.
        let tcp = ServerConfig {
            admin_socket_group: "no-such-group-sse".into(),
            ..ServerConfig::default()
        };
        tcp.validate().unwrap();
    }
}
