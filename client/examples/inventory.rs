//! The inventory seed case with keel-client: a stock of 10, purchases of 3, 5 and 4 at once.
//! Each purchase is an atomic bounded add: the stock never goes below 0 and sold + remaining = 10.
//!
//! ```text
//! cargo run --release -p keel-client --example inventory -- 127.0.0.1:7001
//! ```

use keel_client::{Client, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let endpoints = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".into());
    let client = Client::new(endpoints.split(',')).await?;
    let key = format!("examples/stock/{}", std::process::id());
    client.put(&key, "10").await?;

    let tasks: Vec<_> = [3, 5, 4]
        .into_iter()
        .map(|qty| {
            let (client, key) = (client.clone(), key.clone());
            tokio::spawn(async move { (qty, client.add_bounded(&key, -qty, Some(0), None).await) })
        })
        .collect();
    let mut sold = 0;
    for t in tasks {
        let (qty, result) = t.await.expect("task");
        match result {
            Ok(r) => {
                sold += qty;
                println!("buy {qty}: sold, {} left", r.value);
            }
            Err(Error::BoundViolated { current, .. }) => {
                println!("buy {qty}: refused, only {current} left")
            }
            Err(e) => return Err(e),
        }
    }
    let remaining = client.get(&key).await?.value_i64().unwrap_or(-1);
    println!("sold {sold} + remaining {remaining} = {}", sold + remaining);
    assert_eq!(sold + remaining, 10);
    assert!(remaining >= 0);
    Ok(())
}
