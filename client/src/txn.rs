//! A builder for multi-key transactions (`POST /v1/txn`). The steps, compares and results are
//! keel-api's types: [`Op`] is [`keel_api::txn::StepJson`], [`Compare`] is
//! [`keel_api::txn::CompareJson`], [`TxnResult`] is [`keel_api::txn::TxnResponse`].

use keel_api::txn::{CompareJson, StepJson, TxnRequest, TxnResponse};

use crate::error::Error;
use crate::Client;

/// Builds and commits a transaction: `client.txn().when(..).then(..).otherwise(..).commit()`.
#[derive(Clone, Debug)]
pub struct TxnBuilder<'a> {
    /// The client that commits it.
    client: &'a Client,
    /// The body built so far.
    request: TxnRequest,
}

impl<'a> TxnBuilder<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        TxnBuilder {
            client,
            request: TxnRequest {
                compare: Vec::new(),
                success: Vec::new(),
                failure: Vec::new(),
            },
        }
    }

    /// Adds a condition (all must hold for the success branch).
    pub fn when(mut self, c: CompareJson) -> Self {
        self.request.compare.push(c);
        self
    }

    /// Adds a step to the success branch.
    pub fn then(mut self, op: StepJson) -> Self {
        self.request.success.push(op);
        self
    }

    /// Adds a step to the failure branch.
    pub fn otherwise(mut self, op: StepJson) -> Self {
        self.request.failure.push(op);
        self
    }

    /// Whether the transaction only reads (then it is served like a read, without the log).
    pub fn is_read_only(&self) -> bool {
        self.request.is_read_only()
    }

    pub(crate) fn into_request(self) -> TxnRequest {
        self.request
    }

    /// Sends the transaction (retried safely under one idempotency key if it writes).
    pub async fn commit(self) -> Result<TxnResponse, Error> {
        let client = self.client;
        client.commit_txn(self).await
    }
}
