//! How a reload (SIGHUP) treats each key. Every section declares all its
//! keys in its own `KEYS`, next to the schema, with one of the macros
//! below; a unit test checks that every key of the schema is declared
//! exactly once, so a new key cannot be left out.

use super::Config;

/// One key of the schema and how a reload treats it.
pub(crate) struct Key {
    /// `section.key`, as error messages and logs name it.
    pub(crate) name: &'static str,
    pub(crate) on_reload: OnReload,
}

pub(crate) enum OnReload {
    /// The running node takes the new value (README "Reload (SIGHUP)" says
    /// from when).
    Live,
    /// Read only at start: a reload has nothing to apply and nothing to
    /// warn about.
    AtStart,
    /// The running node keeps its old value until a restart, and a reload
    /// that changes it names it in its warning.
    Restart {
        differs: fn(&Config, &Config) -> bool,
        /// Puts the old value (second) back into the new config (first).
        keep: fn(&mut Config, &Config),
    },
}

/// `live!(section.key)`: a reload applies the new value.
macro_rules! live {
    ($section:ident . $key:ident) => {
        $crate::config::reload::Key {
            name: concat!(stringify!($section), ".", stringify!($key)),
            on_reload: $crate::config::reload::OnReload::Live,
        }
    };
}

/// `at_start!(section.key)`: only read at start.
macro_rules! at_start {
    ($section:ident . $key:ident) => {
        $crate::config::reload::Key {
            name: concat!(stringify!($section), ".", stringify!($key)),
            on_reload: $crate::config::reload::OnReload::AtStart,
        }
    };
}

/// `restart!(section.key)`: needs a restart. The name, the comparison and
/// the copy come from the same field, so they cannot disagree.
macro_rules! restart {
    ($section:ident . $key:ident) => {
        $crate::config::reload::Key {
            name: concat!(stringify!($section), ".", stringify!($key)),
            on_reload: $crate::config::reload::OnReload::Restart {
                differs: |old, new| old.$section.$key != new.$section.$key,
                keep: |new, old| new.$section.$key.clone_from(&old.$section.$key),
            },
        }
    };
}

pub(super) use {at_start, live, restart};
