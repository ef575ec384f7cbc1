//! The dashboard at `/ui` in a real browser: headless Chromium (Debian's `chromium`), driven
//! over the DevTools protocol, opens a follower's `/ui` on a running 3-node cluster, waits for
//! the data, sees three members and the right leader; the leader is killed and the same page,
//! refreshing by itself, shows the new one. With `KEEL_UI_SCREENSHOT=path` it also saves a
//! screenshot (docs/ui.png is one).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use keel_tests::{wait_until, Cluster, DEADLINE};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// A headless Chromium with one page, and a DevTools connection to that page.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in ["/usr/bin", "/usr/local/bin"] {
            let p = PathBuf::from(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("chromium is needed (Debian's chromium; scripts/setup.sh installs it)");
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("a profile directory");
        let child = Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1280,860",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        // Chromium writes the port it chose, and its browser endpoint, here.
        let active = profile.path().join("DevToolsActivePort");
        let port: u16 = wait_until(DEADLINE, "chromium's DevTools port", || {
            std::fs::read_to_string(&active)
                .ok()?
                .lines()
                .next()?
                .trim()
                .parse()
                .ok()
        });
        let http = keel_tests::http::Http::new(Duration::from_secs(2), Duration::from_secs(10));
        let ws_url = wait_until(DEADLINE, "the page's DevTools endpoint", || {
            let pages = http.get_json(&format!("127.0.0.1:{port}"), "/json/list")?;
            pages.as_array()?.iter().find(|p| p["type"] == "page")?["webSocketDebuggerUrl"]
                .as_str()
                .map(str::to_string)
        });
        let (ws, _) = tungstenite::connect(ws_url.as_str()).expect("a DevTools connection");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        }
        Browser {
            child,
            _profile: profile,
            ws,
            next: 0,
        }
    }

    /// Sends a DevTools command and waits for its answer (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).expect("send to chromium");
        // Bounded: events are skipped, at most this many.
        for _ in 0..10_000 {
            let m = self.ws.read().expect("a message from chromium");
            let Ok(text) = m.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if v["id"] == id {
                return v;
            }
        }
        panic!("no answer to {method}");
    }

    /// Evaluates `expr` in the page; its JSON value.
    fn eval(&mut self, expr: &str) -> Value {
        let v = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        v["result"]["result"]["value"].clone()
    }

    /// What the dashboard shows: the leader it names and its member rows.
    fn shown(&mut self) -> (String, Vec<(String, String)>) {
        let v = self.eval(
            "JSON.stringify({leader: document.getElementById('leader').textContent, \
             rows: [...document.querySelectorAll('#members tr')].map(r => [r.dataset.id, r.dataset.role])})",
        );
        let v: Value = serde_json::from_str(v.as_str().unwrap_or("{}")).unwrap_or(Value::Null);
        let rows = v["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r[0].as_str().unwrap_or("").to_string(),
                            r[1].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        (v["leader"].as_str().unwrap_or("").to_string(), rows)
    }

    fn screenshot(&mut self) -> Vec<u8> {
        let v = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let data = v["result"]["data"].as_str().unwrap_or("");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("a base64 screenshot")
    }
}

#[test]
fn the_dashboard_of_a_follower_shows_the_members_and_follows_a_new_leader() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    for i in 0..50 {
        let r = c.put(leader, &format!("ui/{i}"), b"v").expect("answers");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let url = format!("http://{}/ui", c.http_addr(follower));
    let mut b = Browser::open(&url);
    let want_leader = leader.to_string();
    let (_, rows) = wait_until(
        DEADLINE,
        "the page to show 3 members and the leader",
        || {
            let (shown, rows) = b.shown();
            (shown == want_leader && rows.len() == 3).then_some((shown, rows))
        },
    );
    assert!(
        rows.iter()
            .any(|(id, role)| *id == want_leader && role == "leader"),
        "{rows:?}"
    );
    // What nodes send is text, never markup (found by review: addresses went into innerHTML).
    assert_eq!(
        b.eval("esc('<img id=pwn src=x>')").as_str(),
        Some("&lt;img id=pwn src=x&gt;")
    );
    if let Ok(path) = std::env::var("KEEL_UI_SCREENSHOT") {
        // Traffic through every node for a few refreshes, then the picture.
        let mut refreshes = 0;
        let mut seen = String::new();
        for i in 0..5_000u32 {
            let via = c.ids()[i as usize % 3];
            let _ = c.put(via, &format!("ui/more/{}", i % 100), b"v");
            let _ = c.get(via, &format!("ui/{}", i % 50));
            if i % 50 == 0 {
                let now = b.eval("document.body.dataset.updated");
                let now = now.as_str().unwrap_or("").to_string();
                if now != seen {
                    seen = now;
                    refreshes += 1;
                }
                if refreshes > 8 {
                    break;
                }
            }
        }
        std::fs::write(&path, b.screenshot()).expect("write the screenshot");
    }

    c.kill(leader);
    let next = c.wait_for_leader_excluding(&[leader], DEADLINE);
    let want = next.to_string();
    wait_until(DEADLINE, "the same page to show the new leader", || {
        let (shown, rows) = b.shown();
        (shown == want
            && rows
                .iter()
                .any(|(id, role)| *id == want && role == "leader"))
        .then_some(())
    });
}
