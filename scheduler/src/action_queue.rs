use std::collections::{BTreeMap, HashMap, VecDeque};

/// Queued operations: lower priority values first (as the REAPI defines
/// priority); within one priority, clients take turns, so one client's
/// thousand actions do not starve another's one.
#[derive(Default)]
pub struct ActionQueue {
    levels: BTreeMap<i32, Level>,
    len: usize,
}

#[derive(Default)]
struct Level {
    /// Clients in turn order; the front goes next.
    turns: VecDeque<String>,
    queues: HashMap<String, VecDeque<String>>,
}

impl ActionQueue {
    pub fn push(&mut self, priority: i32, client: &str, operation: String) {
        let level = self.levels.entry(priority).or_default();
        let queue = level.queues.entry(client.to_string()).or_insert_with(|| {
            level.turns.push_back(client.to_string());
            VecDeque::new()
        });
        queue.push_back(operation);
        self.len += 1;
    }

    /// Removes and returns the first operation, in priority and turn order,
    /// that `accept` takes.
    pub fn pop_first(&mut self, mut accept: impl FnMut(&str) -> bool) -> Option<String> {
        let mut found = None;
        for (priority, level) in self.levels.iter_mut() {
            for turn in 0..level.turns.len() {
                let client = &level.turns[turn];
                let queue = level.queues.get_mut(client)?;
                if let Some(index) = queue.iter().position(|op| accept(op)) {
                    let operation = queue.remove(index)?;
                    let client = level.turns.remove(turn)?;
                    if queue.is_empty() {
                        level.queues.remove(&client);
                    } else {
                        level.turns.push_back(client);
                    }
                    found = Some((*priority, operation));
                    break;
                }
            }
            if found.is_some() {
                break;
            }
        }
        let (priority, operation) = found?;
        if self.levels.get(&priority).is_some_and(|l| l.turns.is_empty()) {
            self.levels.remove(&priority);
        }
        self.len -= 1;
        Some(operation)
    }

    /// Removes `operation` wherever it is queued.
    pub fn remove(&mut self, operation: &str) -> bool {
        self.pop_first(|op| op == operation).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut ActionQueue) -> Vec<String> {
        std::iter::from_fn(|| queue.pop_first(|_| true)).collect()
    }

    #[test]
    fn priority_then_client_turns() {
        let mut q = ActionQueue::default();
        for i in 0..3 {
            q.push(0, "big", format!("big{i}"));
        }
        q.push(0, "small", "small0".into());
        q.push(-1, "urgent", "urgent0".into());
        q.push(5, "big", "late".into());
        assert_eq!(q.len(), 6);
        assert_eq!(drain(&mut q), ["urgent0", "big0", "small0", "big1", "big2", "late"]);
        assert!(q.is_empty());
    }

    #[test]
    fn skips_what_the_worker_cannot_take_and_removes_by_name() {
        let mut q = ActionQueue::default();
        q.push(0, "a", "gpu-job".into());
        q.push(0, "a", "cpu-job".into());
        q.push(0, "b", "other".into());
        assert_eq!(q.pop_first(|op| op.starts_with("cpu")), Some("cpu-job".into()));
        assert!(q.remove("other"));
        assert!(!q.remove("other"));
        assert_eq!(drain(&mut q), ["gpu-job"]);
    }
}
