//! `rpn EXPR...` evaluates each argument; with no arguments, each line of stdin.
use std::io::{self, BufRead};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("rpn {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let exprs: Vec<String> = if args.is_empty() {
        io::stdin().lock().lines().map_while(Result::ok).collect()
    } else {
        args
    };
    let mut ok = true;
    for e in exprs.iter().filter(|e| !e.trim().is_empty()) {
        match rpn::eval(e) {
            Ok(v) => println!("{v}"),
            Err(err) => {
                eprintln!("rpn: {e}: {err}");
                ok = false;
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
