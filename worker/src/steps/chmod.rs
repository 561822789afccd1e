//! `--chmod` of COPY and ADD: octal or symbolic modes.

use memobuild_proto::{Error, Result};

/// `--chmod`: octal (`0755`) or symbolic (`u+x,go-w`, `a=rX`).
pub enum Chmod {
    Octal(u32),
    Symbolic(String),
}

impl Chmod {
    pub fn parse(spec: &str) -> Result<Chmod> {
        if let Ok(mode) = u32::from_str_radix(spec, 8) {
            return Ok(Chmod::Octal(mode & 0o7777));
        }
        let valid = spec.split(',').all(|clause| {
            let ops = clause.trim_start_matches(['u', 'g', 'o', 'a']);
            !ops.is_empty()
                && ops.split_inclusive(['+', '-', '=']).count() > 0
                && ops.starts_with(['+', '-', '='])
                && ops.chars().all(|c| "+-=rwxXst".contains(c))
        });
        if valid {
            Ok(Chmod::Symbolic(spec.to_string()))
        } else {
            Err(Error::invalid_argument(format!("invalid --chmod={spec}")))
        }
    }

    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(bits) => (mode & !0o7777) | bits,
            Chmod::Symbolic(spec) => spec.split(',').fold(mode, |mode, clause| symbolic(clause, mode, is_dir)),
        }
    }
}

fn symbolic(clause: &str, mode: u32, is_dir: bool) -> u32 {
    let who_end = clause.find(['+', '-', '=']).unwrap_or(clause.len());
    let who = &clause[..who_end];
    let mask = if who.is_empty() || who.contains('a') {
        0o7777
    } else {
        who.chars().fold(0, |m, c| {
            m | match c {
                'u' => 0o4700,
                'g' => 0o2070,
                _ => 0o1007,
            }
        })
    };
    let mut mode = mode;
    let mut rest = &clause[who_end..];
    while let Some(op) = rest.chars().next() {
        let perms_end = rest[1..].find(['+', '-', '=']).map(|i| i + 1).unwrap_or(rest.len());
        let perms = &rest[1..perms_end];
        let any_exec = is_dir || mode & 0o111 != 0;
        let bits = perms.chars().fold(0, |b, c| {
            b | match c {
                'r' => 0o444,
                'w' => 0o222,
                'x' => 0o111,
                'X' if any_exec => 0o111,
                's' => 0o6000,
                't' => 0o1000,
                _ => 0,
            }
        }) & mask;
        mode = match op {
            '+' => mode | bits,
            '-' => mode & !bits,
            _ => (mode & !(mask & 0o7777)) | bits,
        };
        rest = &rest[perms_end..];
    }
    mode
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chmod_forms() {
        assert_eq!(Chmod::Octal(0o755).apply(0o100644, false), 0o100755);
        let sym = |s: &str, mode: u32, dir: bool| Chmod::parse(s).map(|c| c.apply(mode, dir)).ok();
        assert_eq!(sym("u+x", 0o644, false), Some(0o744));
        assert_eq!(sym("go-w", 0o666, false), Some(0o644));
        assert_eq!(sym("a=rX", 0o700, true), Some(0o555));
        assert_eq!(sym("a=rX", 0o600, false), Some(0o444));
        assert_eq!(sym("u=rwx,g=rx,o=", 0o000, false), Some(0o750));
        assert!(Chmod::parse("banana").is_err());
    }
}
