//! The bank case with keel-client: transfers between accounts as transactions (debit bounded at
//! 0, credit), while a reader sums every balance in one read-only transaction. Every read sums to
//! the total and no balance goes negative.
//!
//! ```text
//! cargo run --release -p keel-client --example bank -- 127.0.0.1:7001
//! ```

use keel_client::{Client, Error, Op};
use rand::Rng;

const ACCOUNTS: usize = 4;
const OPENING: i64 = 100;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let endpoints = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".into());
    let client = Client::new(endpoints.split(',')).await?;
    let accounts: Vec<String> = (0..ACCOUNTS)
        .map(|i| format!("examples/bank/{}/{i}", std::process::id()))
        .collect();
    for a in &accounts {
        client.put(a, OPENING.to_string()).await?;
    }
    let total = OPENING * ACCOUNTS as i64;

    let transfers: Vec<_> = (0..8)
        .map(|_| {
            let (client, accounts) = (client.clone(), accounts.clone());
            tokio::spawn(async move {
                let mut done = 0;
                for _ in 0..25 {
                    let (from, to, amount) = {
                        let mut rng = rand::thread_rng();
                        let from = rng.gen_range(0..ACCOUNTS);
                        (
                            from,
                            (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS,
                            rng.gen_range(1..=60),
                        )
                    };
                    let t = client
                        .txn()
                        .then(Op::add_bounded(&accounts[from], -amount, Some(0), None))
                        .then(Op::add(&accounts[to], amount))
                        .commit()
                        .await;
                    match t {
                        Ok(_) => done += 1,
                        Err(Error::BoundViolated { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(done)
            })
        })
        .collect();

    let mut reads = 0;
    while !transfers.iter().all(|t| t.is_finished()) && reads < 10_000 {
        let mut t = client.txn();
        for a in &accounts {
            t = t.then(Op::get(a));
        }
        let r = t.commit().await?;
        let balances: Vec<i64> = (0..ACCOUNTS).filter_map(|i| r.int(i)).collect();
        assert_eq!(
            balances.iter().sum::<i64>(),
            total,
            "a read saw money appear or vanish"
        );
        assert!(balances.iter().all(|b| *b >= 0));
        reads += 1;
    }
    let mut done = 0;
    for t in transfers {
        done += t.await.expect("task")?;
    }
    println!("{done} transfers; {reads} reads of all balances, every one summed to {total}");
    Ok(())
}
