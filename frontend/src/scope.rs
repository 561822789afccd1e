//! The variables visible to an instruction: ENV, then ARGs that have a
//! value. Every lookup is recorded, so a step's key can depend on exactly
//! the variables it read.

use std::collections::BTreeMap;

/// Variables read by one step: name -> value (`None` = unset).
pub type Reads = BTreeMap<String, Option<String>>;

/// ENV and ARG values in scope at one point of a stage (or the global
/// scope before the first FROM, which only has ARGs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    env: Vec<(String, String)>,
    args: Vec<(String, Option<String>)>,
}

impl Scope {
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn args(&self) -> &[(String, Option<String>)] {
        &self.args
    }

    pub fn set_env(&mut self, name: &str, value: String) {
        match self.env.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.env.push((name.to_string(), value)),
        }
    }

    pub fn declare_arg(&mut self, name: &str, value: Option<String>) {
        match self.args.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.args.push((name.to_string(), value)),
        }
    }

    /// The value of an ARG declared in this scope.
    pub fn arg(&self, name: &str) -> Option<&Option<String>> {
        self.args.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// ENV wins over ARG, as in Docker.
    pub fn get(&self, name: &str) -> Option<String> {
        if let Some((_, v)) = self.env.iter().find(|(n, _)| n == name) {
            return Some(v.clone());
        }
        self.arg(name).cloned().flatten()
    }

    /// A lookup for the shell lexer that records what it reads in `reads`.
    pub fn recorder<'a>(&'a self, reads: &'a mut Reads) -> impl FnMut(&str) -> Option<String> + 'a {
        move |name| {
            let value = self.get(name);
            reads.insert(name.to_string(), value.clone());
            value
        }
    }

    /// The environment a RUN sees: ARGs with values, overridden by ENV.
    pub fn run_env(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> =
            self.args.iter().filter_map(|(n, v)| v.clone().map(|v| (n.clone(), v))).collect();
        env.extend(self.env.iter().cloned());
        env
    }
}
