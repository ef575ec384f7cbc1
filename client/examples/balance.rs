//! The balance seed case with keel-client: an account at 100, withdrawals of 50, 60 and 40 sent
//! at the same time. Each is an atomic bounded add, so the leader orders them and none can
//! overdraw: the final balance is 100 minus the approved ones, and each refused one saw too little.
//!
//! ```text
//! cargo run --release -p keel-client --example balance -- 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//! ```

use keel_client::{Client, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let endpoints = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".into());
    let client = Client::new(endpoints.split(',')).await?;
    let key = format!("examples/balance/{}", std::process::id());
    client.put(&key, "100").await?;

    let withdrawals = [50, 60, 40];
    let tasks: Vec<_> = withdrawals
        .iter()
        .map(|&amount| {
            let (client, key) = (client.clone(), key.clone());
            tokio::spawn(async move {
                (
                    amount,
                    client.add_bounded(&key, -amount, Some(0), None).await,
                )
            })
        })
        .collect();
    let mut approved = 0;
    for t in tasks {
        let (amount, result) = t.await.expect("task");
        match result {
            Ok(r) => {
                approved += amount;
                println!("withdraw {amount}: approved, balance now {}", r.value);
            }
            Err(Error::BoundViolated { current, .. }) => {
                println!("withdraw {amount}: declined, balance was {current}");
                assert!(current < amount, "declined without a shortfall");
            }
            Err(e) => return Err(e),
        }
    }
    let balance = client.get(&key).await?.value_i64().unwrap_or(-1);
    println!("final balance {balance} = 100 - {approved}");
    assert_eq!(balance, 100 - approved);
    assert!(balance >= 0);
    Ok(())
}
