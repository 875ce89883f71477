//! With `--database-url postgres://…`, the demo's `/metrics` shows the change feed: whether it
//! is subscribed and the histogram of its heartbeats' round trips, whose count grows as
//! heartbeats come back (one a second). Without `DATABASE_URL`, the test says it was skipped.

use super::metric;
use crate::support::db::postgres::Schema;
use crate::support::demo::Launch;
use crate::support::wait::until;

const COUNT: &str = "api_key_feed_delivery_seconds_count";

#[tokio::test]
async fn metrics_show_the_change_feeds_delivery_histogram_growing() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let server = Launch::new()
        .arg("--database-url")
        .arg(&schema.url_with_search_path())
        .start()
        .await;
    let text = server.get("/metrics").await.text().to_owned();
    assert!(
        text.contains("# TYPE api_key_feed_delivery_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("api_key_feed_delivery_seconds_bucket{le=\"0.005\"} "),
        "{text}"
    );
    let first = metric(&text, COUNT);
    until("the delivery histogram's count to grow", || async {
        let text = server.get("/metrics").await.text().to_owned();
        metric(&text, COUNT) > first && metric(&text, "api_key_feed_subscribed") == 1
    })
    .await;
    let text = server.get("/metrics").await.text().to_owned();
    assert_eq!(
        metric(&text, "api_key_feed_delivery_seconds_bucket{le=\"+Inf\"}"),
        metric(&text, COUNT)
    );
}
