//! How long each phase of a RUN step took, logged as one debug line when
//! the step ends (`MEMOBUILD_LOG=memobuild_worker::containerd=debug`).

use std::time::{Duration, Instant};

/// Records phase durations in order.
pub(super) struct PhaseClock {
    started: Instant,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl PhaseClock {
    pub(super) fn start() -> Self {
        let now = Instant::now();
        PhaseClock { started: now, last: now, phases: Vec::new() }
    }

    /// Ends the phase `name`, which began when the previous one ended.
    pub(super) fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now - self.last));
        self.last = now;
    }

    /// The phases as `name=1.2ms ...`, then the total.
    pub(super) fn summary(&self) -> String {
        let mut text: String =
            self.phases.iter().map(|(name, d)| format!("{name}={:.1}ms ", d.as_secs_f64() * 1000.0)).collect();
        text.push_str(&format!("total={:.1}ms", self.started.elapsed().as_secs_f64() * 1000.0));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_listed_in_order_with_the_total() {
        let mut clock = PhaseClock::start();
        clock.mark("prepare");
        clock.mark("start");
        let summary = clock.summary();
        assert!(summary.starts_with("prepare=") && summary.contains(" start=") && summary.contains(" total="));
    }
}
