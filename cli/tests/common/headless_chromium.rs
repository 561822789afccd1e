//! Debian's Chromium, headless, driven over the DevTools protocol on a
//! pipe (`--remote-debugging-pipe`: JSON messages ended by NUL on fds 3
//! and 4, given to it through two FIFOs). Enough to open a page, evaluate
//! JavaScript in it and take a screenshot. Stopped when dropped.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

pub struct Chromium {
    child: Child,
    commands: std::fs::File,
    replies: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    _dir: tempfile::TempDir,
}

impl Chromium {
    /// Starts Chromium and opens `url` in a page of `width` x `height`.
    pub fn open(url: &str, width: u32, height: u32) -> Chromium {
        let dir = tempfile::tempdir().unwrap();
        let (to_browser, from_browser) = (dir.path().join("in"), dir.path().join("out"));
        for fifo in [&to_browser, &from_browser] {
            assert!(Command::new("mkfifo").arg(fifo).status().unwrap().success());
        }
        let profile = dir.path().join("profile");
        let script = r#"exec chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
            --no-first-run --no-default-browser-check --remote-debugging-pipe --user-data-dir="$1" \
            --window-size="$4" about:blank 3<"$2" 4>"$3""#;
        let child = Command::new("sh")
            .args(["-c", script, "chromium"])
            .arg(&profile)
            .arg(&to_browser)
            .arg(&from_browser)
            .arg(format!("{width},{height}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium (Debian package chromium)");
        // Opening blocks until the other side opens: Chromium reads, then writes.
        let commands = std::fs::OpenOptions::new().write(true).open(&to_browser).unwrap();
        let replies = reader(&from_browser);
        let mut browser = Chromium { child, commands, replies, next_id: 0, session: String::new(), _dir: dir };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = browser.call("Target.attachToTarget", json!({ "targetId": target, "flatten": true }));
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false
            }),
        );
        browser.call("Page.navigate", json!({ "url": url }));
        browser
    }

    /// Sends one command (to the page once attached) and waits for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        loop {
            let reply = self.replies.recv_timeout(Duration::from_secs(60)).expect("Chromium answers within a minute");
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page (JSON-able).
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }));
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }

    /// A PNG of the page, written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// The messages Chromium writes, parsed, as they come.
fn reader(path: &Path) -> mpsc::Receiver<Value> {
    let file = std::fs::File::open(path).unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(file);
        let mut message = Vec::new();
        while reader.read_until(0, &mut message).unwrap_or(0) > 0 {
            message.pop_if(|b| *b == 0);
            if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                if sender.send(value).is_err() {
                    return;
                }
            }
            message.clear();
        }
    });
    receiver
}

impl Drop for Chromium {
    /// Asks the browser to close (it takes its helper processes along),
    /// then kills it if it has not within a few seconds.
    fn drop(&mut self) {
        let mut bytes = br#"{"id":0,"method":"Browser.close","params":{}}"#.to_vec();
        bytes.push(0);
        let _ = self.commands.write_all(&bytes);
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
