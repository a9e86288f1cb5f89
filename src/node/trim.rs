//! Giving memory back to the system after many streams closed.
//!
//! glibc's allocator keeps freed memory for reuse, so after a crowd of
//! streams leaves (a reconnect storm, a logout wave) the RSS stays at its
//! peak. When the number of streams has dropped a lot since the last check,
//! `malloc_trim` returns the free pages of every arena to the kernel.

/// Tracks the stream count between ticks and trims when it fell, or when a
/// fifth as many streams as are live (at least 500) have closed since the
/// last trim: a steady churn keeps the count flat while freed memory piles
/// up, and trimming every few thousand closes keeps that pile within a few
/// percent of the RSS.
#[derive(Default)]
pub(crate) struct Trimmer {
    peak: usize,
    closes_at_trim: u64,
}

impl Trimmer {
    /// `live` is the current number of streams, `closes` how many closed
    /// since start; `shrink` gives back the spare capacity of the owner's
    /// maps first. True if it trimmed.
    pub(crate) fn tick(&mut self, live: usize, closes: u64, shrink: impl FnOnce()) -> bool {
        self.peak = self.peak.max(live);
        let dropped = self.peak - live;
        let churned = closes.saturating_sub(self.closes_at_trim);
        if dropped >= 1000
            || (dropped >= 100 && dropped * 5 >= self.peak)
            || churned >= (live as u64 / 5).max(500)
        {
            self.peak = live;
            self.closes_at_trim = closes;
            shrink();
            release_free_memory();
            return true;
        }
        false
    }
}

pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Trimmer {
        fn tick_n(&mut self, live: usize) -> bool {
            self.tick(live, self.closes_at_trim, || {})
        }
    }

    #[test]
    fn trims_after_a_large_drop_only() {
        let mut t = Trimmer::default();
        assert!(!t.tick_n(5000));
        assert!(!t.tick_n(4950));
        assert!(t.tick_n(3900));
        assert!(!t.tick_n(3800));
        assert!(t.tick_n(50));
        let mut small = Trimmer::default();
        assert!(!small.tick_n(300));
        assert!(small.tick_n(200));
    }

    #[test]
    fn trims_under_steady_churn() {
        let mut t = Trimmer::default();
        assert!(!t.tick(5000, 0, || {}));
        assert!(!t.tick(5000, 900, || {}));
        assert!(t.tick(5000, 1000, || {}));
        assert!(!t.tick(5000, 1900, || {}));
        assert!(t.tick(5000, 2000, || {}));
        // A small node still waits for 500 closes.
        let mut small = Trimmer::default();
        assert!(!small.tick(100, 499, || {}));
        assert!(small.tick(100, 500, || {}));
    }
}
