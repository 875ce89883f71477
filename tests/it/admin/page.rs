//! The Integration page in a real browser (headless Chromium over WebDriver): every step of a
//! key's life driven through the page, and each checked against the JSON API and against
//! `/v1/ping` with the key. Waits are for conditions (bounded by [`PATIENCE`]), never sleeps.

use std::time::Duration;

use fantoccini::Locator;
use http::{Method, StatusCode};
use serde_json::Value;

use super::{Harness, TOKEN};
use crate::support::browser::{Browser, PATIENCE};

mod activity;
mod policy;
mod usage;

/// The page in a browser, next to the server that serves it.
struct Page {
    browser: Browser,
    harness: Harness,
}

impl Page {
    async fn open(width: u32, height: u32) -> Option<Self> {
        Self::open_on(width, height, Harness::start()).await
    }

    /// The page served by the harness `start` makes.
    async fn open_on(
        width: u32,
        height: u32,
        start: impl std::future::Future<Output = Harness>,
    ) -> Option<Self> {
        let browser = Browser::start(width, height).await?;
        let harness = start.await;
        let page = Self { browser, harness };
        page.load().await;
        Some(page)
    }

    async fn load(&self) {
        let url = format!("http://{}/integration", self.harness.addr());
        self.browser.client.goto(&url).await.expect("open the page");
    }

    /// What the page shows, read in one script: rows (id and cells by column), the count,
    /// the alert, the new key, whether "Create key" is disabled.
    async fn state(&self) -> Value {
        const READ: &str = r##"
            const visible = (el) => !el.hidden && !el.closest("[hidden]");
            const rows = [...document.querySelectorAll("#rows tr")].map((tr) => ({
                id: tr.dataset.keyId,
                text: tr.innerText,
                cells: Object.fromEntries([...tr.cells].map((td) => [td.dataset.label, td.innerText.trim()])),
            }));
            const error = document.getElementById("error");
            const fresh = document.getElementById("new-key");
            return {
                rows,
                count: visible(document.getElementById("keys")) ? document.getElementById("count").innerText : null,
                error: visible(error) ? error.innerText : null,
                newKey: visible(fresh) ? document.getElementById("new-key-value").innerText : null,
                createDisabled: document.getElementById("create").disabled,
            };
        "##;
        self.browser
            .client
            .execute(READ, vec![])
            .await
            .expect("read the page")
    }

    /// Waits until `ready` holds for the page's state, and returns that state.
    async fn wait_for(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let state = self.state().await;
            if ready(&state) {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {what}; it shows {state:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn fill(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.expect("clear");
        input.send_keys(text).await.expect("type");
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.browser
            .client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no {css} on the page: {err}"))
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Clicks "Create key" and returns the new key the page then shows.
    async fn create_shown(&self) -> String {
        self.click("#create").await;
        key_of(
            &self
                .wait_for("a new key", |s| s["newKey"].is_string())
                .await,
        )
    }

    /// Waits until the list's count reads `count` ("1 of 3 keys").
    async fn wait_for_count(&self, count: &str) -> Value {
        self.wait_for(count, |s| s["count"] == count).await
    }

    /// Types `keys` (WebDriver key codes allowed) into whatever has the focus.
    async fn press(&self, keys: &str) {
        self.browser
            .client
            .active_element()
            .await
            .expect("a focused element")
            .send_keys(keys)
            .await
            .expect("type");
    }

    /// Clicks the button labelled `label` in the row of key `id`.
    async fn click_in_row(&self, id: &str, label: &str) {
        let xpath = format!("//tr[@data-key-id='{id}']//button[normalize-space()='{label}']");
        self.browser
            .client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|err| panic!("no {label} button for {id}: {err}"))
            .click()
            .await
            .expect("click");
    }

    /// Answers the `window.confirm` the last click opened, after checking its question.
    async fn confirm(&self, mentions: &str, accept: bool) {
        let client = &self.browser.client;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let text = loop {
            match client.get_alert_text().await {
                Ok(text) => break text,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("no confirmation was asked: {err}"),
            }
        };
        assert!(text.contains(mentions), "{text:?}");
        if accept {
            client.accept_alert().await.expect("accept");
        } else {
            client.dismiss_alert().await.expect("dismiss");
        }
    }

    async fn show_keys(&self, token: &str) {
        self.fill("#token", token).await;
        self.fill("#account", "acme").await;
        self.click("#show").await;
    }

    /// Where the page still holds `key` (whole, or its part after the prefix): the DOM's
    /// markup, an input's value, the selection, the page's text. Empty once it is forgotten.
    async fn places_holding(&self, key: &str) -> Vec<String> {
        const FIND: &str = r##"
            const needles = [arguments[0], arguments[1]];
            const holds = (text) => needles.some((needle) => String(text).includes(needle));
            const places = [];
            if (holds(document.documentElement.outerHTML)) {
                places.push("the DOM");
            }
            for (const el of document.querySelectorAll("input, textarea, select")) {
                if (holds(el.value)) {
                    places.push("the value of #" + el.id);
                }
            }
            if (holds(window.getSelection())) {
                places.push("the selection");
            }
            if (holds(document.body.innerText)) {
                places.push("the page's text");
            }
            return places;
        "##;
        let args = vec![Value::from(key), Value::from(&key[9..])];
        let places = self
            .browser
            .client
            .execute(FIND, args)
            .await
            .expect("search the page");
        serde_json::from_value(places).expect("a list of places")
    }

    /// Waits until the page holds `key` nowhere (see [`places_holding`](Self::places_holding)).
    async fn wait_until_forgotten(&self, key: &str, after: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let places = self.places_holding(key).await;
            if places.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "after {after}, the page still holds the new key in {places:?}; it shows {:#}",
                self.state().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The id of the focused element.
    async fn focused(&self) -> Value {
        self.browser
            .client
            .execute("return document.activeElement.id", vec![])
            .await
            .expect("read focus")
    }

    /// Waits until a listed key's status starts with `status` ("Active", "Inactive").
    async fn wait_for_status(&self, what: &str, status: &str) -> Value {
        self.wait_for(what, |s| {
            rows(s).iter().any(|r| {
                r["cells"]["Status"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(status))
            })
        })
        .await
    }

    /// Asserts that the page doesn't scroll sideways (at 360 px, the narrowest width).
    async fn assert_no_sideways_scroll(&self) {
        let overflow = self
            .browser
            .client
            .execute(
                "return document.documentElement.scrollWidth - window.innerWidth",
                vec![],
            )
            .await
            .expect("measure");
        assert!(
            overflow.as_i64().is_some_and(|px| px <= 0),
            "the page scrolls sideways at 360 px by {overflow}"
        );
    }

    /// The status of `GET /v1/ping` with `key`.
    async fn ping(&self, key: &str) -> StatusCode {
        self.harness
            .send(Method::GET, "/v1/ping", &[("x-api-key", key)], None)
            .await
            .status
    }
}

fn rows(state: &Value) -> &Vec<Value> {
    state["rows"].as_array().expect("rows")
}

fn row<'s>(state: &'s Value, id: &str) -> &'s Value {
    rows(state)
        .iter()
        .find(|row| row["id"] == id)
        .unwrap_or_else(|| panic!("no row for {id} in {state:#}"))
}

fn key_of(state: &Value) -> String {
    state["newKey"].as_str().expect("a new key").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_whole_life_through_the_page() {
    let Some(page) = Page::open(1280, 900).await else {
        return;
    };

    // A wrong token: a readable error, and nothing else appears.
    page.show_keys("not-the-operator-token").await;
    let state = page.wait_for("an error", |s| s["error"].is_string()).await;
    assert!(
        state["error"].as_str().expect("text").contains("401"),
        "{state:#}"
    );
    assert!(state["count"].is_null() && rows(&state).is_empty());

    page.show_keys(TOKEN).await;
    let state = page
        .wait_for("the empty list", |s| s["count"] == "0 of 3 keys")
        .await;
    assert!(state["error"].is_null(), "the error is cleared");

    // Create, with a name: the key is shown once, the row never shows its secret.
    page.fill("#name", "CI").await;
    page.click("#create").await;
    let state = page
        .wait_for("a new key", |s| s["newKey"].is_string())
        .await;
    let first = key_of(&state);
    let listed = page.harness.list("acme").await;
    assert_eq!(listed.len(), 1);
    let id = listed[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(listed[0]["name"], "CI");
    assert_eq!(&first[..8], listed[0]["prefix"].as_str().expect("prefix"));
    let cells = &row(&state, &id)["cells"];
    assert_eq!(cells["Prefix"], &first[..8]);
    assert_eq!(cells["Name"], "CI");
    assert_eq!(cells["Status"], "Active");
    assert_eq!(cells["Last used"], "Never");
    assert!(
        !row(&state, &id)["text"]
            .as_str()
            .expect("text")
            .contains(&first[9..])
    );
    assert_eq!(state["count"], "1 of 3 keys");
    assert_eq!(page.ping(&first).await, StatusCode::OK);

    // The use shows up as "last used" once recorded.
    page.harness.wait_until_used("acme", &id).await;
    page.click("#show").await;
    page.wait_for("a last-used time", |s| {
        rows(s)
            .first()
            .is_some_and(|r| r["cells"]["Last used"] != "Never")
    })
    .await;

    // A reload forgets the secret.
    page.load().await;
    let state = page
        .wait_for("the reloaded page", |s| s["count"].is_null())
        .await;
    assert!(state["newKey"].is_null());
    page.show_keys(TOKEN).await;
    page.wait_for("the list", |s| s["count"] == "1 of 3 keys")
        .await;

    // Rotate: confirmed, the new key shown once, the old one refused at once.
    page.click_in_row(&id, "Rotate").await;
    page.confirm("Rotate", true).await;
    let state = page
        .wait_for("the rotated key", |s| {
            s["newKey"].as_str().is_some_and(|k| k != first)
        })
        .await;
    let second = key_of(&state);
    assert_eq!(row(&state, &id)["cells"]["Prefix"], &second[..8]);
    assert_eq!(page.ping(&first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(page.ping(&second).await, StatusCode::OK);

    // Rotate with a grace period: both keys work, and the row says so.
    page.find(&format!("tr[data-key-id='{id}'] select"))
        .await
        .select_by_value("3600")
        .await
        .expect("choose a grace period");
    page.click_in_row(&id, "Rotate").await;
    page.confirm("grace period", true).await;
    let state = page
        .wait_for("the rotated key", |s| {
            s["newKey"].as_str().is_some_and(|k| k != second)
        })
        .await;
    let third = key_of(&state);
    let status = row(&state, &id)["cells"]["Status"]
        .as_str()
        .expect("status")
        .to_owned();
    assert!(
        status.contains("Grace") && status.contains(&second[..8]),
        "{status}"
    );
    assert_eq!(page.ping(&second).await, StatusCode::OK);
    assert_eq!(page.ping(&third).await, StatusCode::OK);

    // Revoke and reactivate.
    page.click_in_row(&id, "Revoke").await;
    page.wait_for_status("an inactive key", "Inactive").await;
    assert_eq!(page.ping(&third).await, StatusCode::UNAUTHORIZED);
    assert_eq!(page.harness.list("acme").await[0]["status"], "inactive");
    page.click_in_row(&id, "Reactivate").await;
    page.wait_for_status("an active key", "Active").await;
    assert_eq!(page.ping(&third).await, StatusCode::OK);

    // Up to the limit: "Create key" is disabled.
    for n in 2..=3 {
        page.click("#create").await;
        page.wait_for("another key", |s| s["count"] == format!("{n} of 3 keys"))
            .await;
    }
    let state = page
        .wait_for("a full account", |s| s["createDisabled"] == true)
        .await;
    assert_eq!(state["count"], "3 of 3 keys");
    // Tall enough for the whole page in the screenshot.
    page.browser
        .client
        .set_window_size(1280, 1300)
        .await
        .expect("resize");
    let png = page.browser.client.screenshot().await.expect("screenshot");
    save_screenshot(&png);

    // A failed call shows an error and changes nothing.
    page.fill("#token", "not-the-operator-token").await;
    page.click_in_row(&id, "Revoke").await;
    let failed = page.wait_for("an error", |s| s["error"].is_string()).await;
    assert_eq!(rows(&failed).len(), 3);
    assert_eq!(page.harness.list("acme").await[0]["status"], "active");
    page.fill("#token", TOKEN).await;

    // Delete: cancelled changes nothing; confirmed removes the row and frees the slot.
    page.click_in_row(&id, "Delete").await;
    page.confirm("Delete", false).await;
    assert_eq!(page.harness.list("acme").await.len(), 3);
    page.click_in_row(&id, "Delete").await;
    page.confirm("Delete", true).await;
    let state = page
        .wait_for("two keys", |s| s["count"] == "2 of 3 keys")
        .await;
    assert!(rows(&state).iter().all(|r| r["id"] != id.as_str()));
    assert_eq!(state["createDisabled"], false);
    assert_eq!(page.ping(&third).await, StatusCode::UNAUTHORIZED);
    assert_eq!(page.harness.list("acme").await.len(), 2);

    page.browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_with_a_rate_limit_shows_it_in_the_list() {
    let Some(page) = Page::open(1280, 900).await else {
        return;
    };
    page.show_keys(TOKEN).await;
    page.wait_for_count("0 of 3 keys").await;

    // Half a limit: the API's answer is the alert, and nothing is created.
    page.fill("#rate-requests", "5").await;
    page.click("#create").await;
    let state = page.wait_for("an error", |s| s["error"].is_string()).await;
    assert!(
        state["error"]
            .as_str()
            .is_some_and(|e| e.contains("per_seconds") && e.contains("400")),
        "{state:#}"
    );
    assert!(page.harness.list("acme").await.is_empty());

    // Both: the record and the row show it.
    page.fill("#rate-seconds", "2").await;
    page.click("#create").await;
    let state = page
        .wait_for("a new key", |s| s["newKey"].is_string())
        .await;
    assert!(state["error"].is_null(), "{state:#}");
    let listed = page.harness.list("acme").await;
    assert_eq!(
        listed[0]["rate_limit"],
        serde_json::json!({"requests": 5, "per_seconds": 2})
    );
    let id = listed[0]["id"].as_str().expect("id");
    assert_eq!(row(&state, id)["cells"]["Rate limit"], "5 / 2 s");

    // The form was reset: the next key has no limit of its own.
    page.click("#create").await;
    let state = page
        .wait_for("two keys", |s| s["count"] == "2 of 3 keys")
        .await;
    let second = page.harness.list("acme").await[1]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(row(&state, &second)["cells"]["Rate limit"], "—");
    assert_eq!(row(&state, id)["cells"]["Rate limit"], "5 / 2 s");
    page.browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_at_360_pixels_with_the_keyboard_alone() {
    let Some(page) = Page::open(360, 740).await else {
        return;
    };
    let client = &page.browser.client;
    let focused = || async {
        client
            .execute("return document.activeElement.id", vec![])
            .await
            .expect("read focus")
    };

    // Type the token, Tab to the account, type it, Tab to "Show keys", press Enter.
    page.find("#token").await.click().await.expect("focus");
    page.find("#token")
        .await
        .send_keys(TOKEN)
        .await
        .expect("type");
    page.press("\u{E004}acme\u{E004}").await;
    assert_eq!(focused().await, "show");
    page.press("\u{E007}").await;
    page.wait_for("the empty list", |s| s["count"] == "0 of 3 keys")
        .await;

    // Create a key from the name field with Enter.
    page.find("#name").await.click().await.expect("focus");
    page.press("phone\u{E007}").await;
    let state = page
        .wait_for("a new key", |s| s["newKey"].is_string())
        .await;
    let key = key_of(&state);
    assert_eq!(page.ping(&key).await, StatusCode::OK);

    page.assert_no_sideways_scroll().await;

    // From the shown key, Tab past "Copy" to "Done" and press Enter: the key goes, and
    // focus lands on the keys' heading rather than on nothing.
    assert_eq!(focused().await, "new-key");
    page.press("\u{E004}\u{E004}").await;
    assert_eq!(focused().await, "done");
    page.press("\u{E007}").await;
    page.wait_until_forgotten(&key, "Done").await;
    assert_eq!(focused().await, "keys-title");
    page.browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_removes_a_new_key_from_the_page() {
    let Some(page) = Page::open(1280, 900).await else {
        return;
    };
    page.show_keys(TOKEN).await;
    page.wait_for_count("0 of 3 keys").await;
    page.click("#create").await;
    let state = page
        .wait_for("a new key", |s| s["newKey"].is_string())
        .await;
    let key = key_of(&state);
    assert!(
        page.places_holding(&key)
            .await
            .contains(&"the DOM".to_owned()),
        "the search finds the key while it is shown"
    );

    // Copied or selected (whichever the headless browser allows), then done with.
    page.click("#copy").await;
    let copied = page
        .browser
        .client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::XPath("//*[@id='copied'][normalize-space()!='']"))
        .await;
    assert!(copied.is_ok(), "the copy said nothing: {copied:?}");
    // As a user would with the mouse, whatever the clipboard did.
    const SELECT: &str = r#"
        const range = document.createRange();
        range.selectNodeContents(document.getElementById("new-key-value"));
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
    "#;
    page.browser
        .client
        .execute(SELECT, vec![])
        .await
        .expect("select the key");
    assert!(
        page.places_holding(&key)
            .await
            .contains(&"the selection".to_owned())
    );
    page.click("#done").await;
    page.wait_until_forgotten(&key, "Done").await;
    let state = page
        .wait_for("the list without the key", |s| s["newKey"].is_null())
        .await;
    assert_eq!(state["count"], "1 of 3 keys", "the list stays");
    assert!(state["error"].is_null(), "{state:#}");
    let copied = page.find("#copied").await.text().await.expect("text");
    assert_eq!(copied, "", "the copy's note goes with the key");
    assert_eq!(
        page.focused().await,
        "keys-title",
        "focus moves to the keys"
    );
    assert_eq!(
        page.ping(&key).await,
        StatusCode::OK,
        "the key itself stays"
    );

    // The next key is shown as usual.
    page.click("#create").await;
    let state = page
        .wait_for("another new key", |s| s["newKey"].is_string())
        .await;
    assert_ne!(key_of(&state), key);
    assert_eq!(state["count"], "2 of 3 keys");
    page.browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_or_a_failed_load_removes_a_new_key_from_the_page() {
    let Some(page) = Page::open(1280, 900).await else {
        return;
    };
    page.show_keys(TOKEN).await;
    page.wait_for_count("0 of 3 keys").await;

    // Another account's keys: the key created for acme goes.
    let first = page.create_shown().await;
    page.fill("#account", "globex").await;
    page.click("#show").await;
    page.wait_for("globex's empty list", |s| s["count"] == "0 of 3 keys")
        .await;
    page.wait_until_forgotten(&first, "showing another account")
        .await;

    // A "Show keys" that fails (a wrong token: 401) takes the key with it, even for the same
    // account, and the alert says why.
    page.show_keys(TOKEN).await;
    page.wait_for("acme's list", |s| s["count"] == "1 of 3 keys")
        .await;
    let second = page.create_shown().await;
    page.show_keys("not-the-operator-token").await;
    let state = page.wait_for("an error", |s| s["error"].is_string()).await;
    assert!(
        state["error"].as_str().expect("text").contains("401"),
        "{state:#}"
    );
    page.wait_until_forgotten(&second, "a failed load").await;

    // So does one for another account.
    page.show_keys(TOKEN).await;
    page.wait_for("acme's list", |s| {
        s["count"] == "2 of 3 keys" && s["error"].is_null()
    })
    .await;
    let third = page.create_shown().await;
    page.fill("#token", "not-the-operator-token").await;
    page.fill("#account", "globex").await;
    page.click("#show").await;
    page.wait_for("an error", |s| s["error"].is_string()).await;
    page.wait_until_forgotten(&third, "a failed load of another account")
        .await;
    assert_eq!(page.harness.list("acme").await.len(), 3);
    page.browser.finish().await;
}

/// Keeps the screenshot of a full account: always under `target/`, and in
/// `docs/integration-page.png` when `UPDATE_SCREENSHOT=1`.
fn save_screenshot(png: &[u8]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/integration-page.png");
    std::fs::write(&target, png).expect("write the screenshot");
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        std::fs::create_dir_all(root.join("docs")).expect("docs/");
        std::fs::write(root.join("docs/integration-page.png"), png).expect("write docs/");
    }
}

#[tokio::test]
async fn the_page_is_served_with_strict_headers_and_no_outside_resources() {
    let harness = Harness::start().await;
    let html = harness.send(Method::GET, "/integration", &[], None).await;
    assert_eq!(html.status, StatusCode::OK);
    let csp = html.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(html.header("x-content-type-options"), Some("nosniff"));
    let text = html.text();
    assert!(
        !text.contains("http://") && !text.contains("https://"),
        "no outside resources"
    );
    for asset in ["/integration/page.js", "/integration/page.css"] {
        let reply = harness.send(Method::GET, asset, &[], None).await;
        assert_eq!(reply.status, StatusCode::OK, "{asset}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert!(!reply.text().contains("https://"), "{asset}");
    }
}

#[tokio::test]
async fn the_page_can_move_be_nested_or_be_left_out() {
    use axum::Router;
    use tower::ServiceExt as _;
    use tower_api_key::admin::{AdminRouter, AdminToken};

    let manager = tower_api_key::KeyManager::new(
        std::sync::Arc::new(tower_api_key::MemoryStore::new()),
        crate::support::pepper(),
    );
    let token = || AdminToken::new(TOKEN).expect("long enough");
    let status = |app: Router, path: &'static str| async move {
        let request = http::Request::get(path)
            .body(axum::body::Body::empty())
            .expect("request");
        app.oneshot(request).await.expect("infallible")
    };

    let moved: Router = Router::new().nest(
        "/settings",
        AdminRouter::new(manager.clone(), token())
            .page_path("/api/keys/")
            .hide_token_input()
            .into_router(),
    );
    let page = status(moved.clone(), "/settings/api/keys").await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = axum::body::to_bytes(page.into_body(), usize::MAX)
        .await
        .expect("body");
    let html = String::from_utf8_lossy(&html);
    // Relative URLs lead back to where the router is nested.
    assert!(html.contains(r#"data-api-root="../""#), "{html}");
    assert!(html.contains(r#"data-token-input="hidden""#));
    assert!(html.contains(r#"src="keys/page.js""#));
    let script = status(moved.clone(), "/settings/api/keys/page.js").await;
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(
        status(moved, "/settings/integration").await.status(),
        StatusCode::NOT_FOUND
    );

    let without: Router = AdminRouter::new(manager, token())
        .without_page()
        .into_router();
    assert_eq!(
        status(without, "/integration").await.status(),
        StatusCode::NOT_FOUND
    );
}

/// A tenant signs in to the page with its own token: it manages its account's keys through
/// the page (whose same-origin requests pass the cross-site guard), and another account is
/// the missing key's 404.
#[tokio::test]
async fn a_tenant_token_manages_its_own_account_through_the_page() {
    use tower_api_key::admin::{AdminToken, AdminTokens};

    const ACME: &str = "acme-tenant-token-for-the-page";
    let tokens = AdminTokens::new()
        .operator(AdminToken::new(TOKEN).expect("token"))
        .tenant(
            crate::support::account("acme"),
            AdminToken::new(ACME).expect("token"),
        );
    let Some(page) = Page::open_on(1280, 900, Harness::with_authorizer(tokens)).await else {
        return;
    };
    page.show_keys(ACME).await;
    page.wait_for_count("0 of 3 keys").await;
    page.click("#create").await;
    let state = page
        .wait_for("a new key", |s| s["newKey"].is_string())
        .await;
    let key = key_of(&state);
    assert_eq!(page.ping(&key).await, StatusCode::OK);
    let id = page.harness.list("acme").await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    page.click_in_row(&id, "Revoke").await;
    page.wait_for_status("an inactive key", "Inactive").await;
    assert_eq!(page.ping(&key).await, StatusCode::UNAUTHORIZED);
    assert!(page.state().await["error"].is_null());

    page.fill("#account", "globex").await;
    page.click("#show").await;
    let state = page.wait_for("an error", |s| s["error"].is_string()).await;
    assert!(
        state["error"].as_str().expect("text").contains("404"),
        "{state:#}"
    );
    page.browser.finish().await;
}
