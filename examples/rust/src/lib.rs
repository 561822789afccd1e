//! Evaluates reverse-Polish-notation expressions: `3 4 + 2 *` is 14.

use std::fmt;

#[derive(Debug, PartialEq)]
pub enum Error {
    StackUnderflow(String),
    UnknownToken(String),
    DivisionByZero,
    Leftover(usize),
    Empty,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::StackUnderflow(op) => write!(f, "not enough operands for '{op}'"),
            Error::UnknownToken(t) => write!(f, "unknown token '{t}'"),
            Error::DivisionByZero => write!(f, "division by zero"),
            Error::Leftover(n) => write!(f, "{n} values left on the stack"),
            Error::Empty => write!(f, "empty expression"),
        }
    }
}

impl std::error::Error for Error {}

/// Evaluates one expression; tokens are separated by whitespace.
pub fn eval(expr: &str) -> Result<f64, Error> {
    let mut stack: Vec<f64> = Vec::new();
    for tok in expr.split_whitespace() {
        if let Ok(v) = tok.parse::<f64>() {
            stack.push(v);
            continue;
        }
        let unary = matches!(tok, "neg" | "sqrt" | "dup");
        if unary {
            let a = stack.pop().ok_or_else(|| Error::StackUnderflow(tok.into()))?;
            match tok {
                "neg" => stack.push(-a),
                "sqrt" => stack.push(a.sqrt()),
                _ => {
                    stack.push(a);
                    stack.push(a)
                }
            }
            continue;
        }
        let (b, a) = match (stack.pop(), stack.pop()) {
            (Some(b), Some(a)) => (b, a),
            _ => return Err(Error::StackUnderflow(tok.into())),
        };
        let value = match tok {
            "+" => a + b,
            "-" => a - b,
            "*" | "x" => a * b,
            "/" => {
                if b == 0.0 {
                    return Err(Error::DivisionByZero);
                }
                a / b
            }
            "^" => a.powf(b),
            "swap" => {
                stack.push(b);
                a
            }
            _ => return Err(Error::UnknownToken(tok.into())),
        };
        stack.push(value);
    }
    match stack.len() {
        0 => Err(Error::Empty),
        1 => Ok(stack[0]),
        n => Err(Error::Leftover(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        assert_eq!(eval("3 4 + 2 *"), Ok(14.0));
        assert_eq!(eval("10 4 -"), Ok(6.0));
        assert_eq!(eval("2 10 ^"), Ok(1024.0));
        assert_eq!(eval("1 2 swap -"), Ok(1.0));
        assert_eq!(eval("9 sqrt neg"), Ok(-3.0));
        assert_eq!(eval("5 dup *"), Ok(25.0));
    }

    #[test]
    fn errors() {
        assert_eq!(eval(""), Err(Error::Empty));
        assert_eq!(eval("1 +"), Err(Error::StackUnderflow("+".into())));
        assert_eq!(eval("1 0 /"), Err(Error::DivisionByZero));
        assert_eq!(eval("1 2"), Err(Error::Leftover(2)));
        assert_eq!(eval("1 2 %"), Err(Error::UnknownToken("%".into())));
    }
}
