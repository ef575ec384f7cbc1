//! Every way a request can fail, mapped to a status, a code and a JSON body in one place.
//!
//! A handler returns [`ApiError`]; [`super::reply`] turns it into the response. The status comes
//! from the code ([`ErrorCode::status`]), so the two never disagree; 503 answers carry
//! `Retry-After`, 405 answers carry `Allow`.

use keel_api::{ErrorBody, ErrorCode};

use crate::error::{ReadError, WriteError};
use crate::proto::ApplyResult;
use crate::storage::StorageError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The body: code, message and extra fields (boxed: errors travel in `Result`s on every
    /// request path and should stay small).
    pub(super) body: Box<ErrorBody>,
    /// The code, parsed (the body carries it as a string).
    pub(super) code: ErrorCode,
    /// `X-Keel-Index` when it is not the node's applied index (a rejected write's index, the
    /// index a 404 was read at).
    pub(super) index: Option<u64>,
    /// The `Allow` header of a 405.
    pub(super) allow: Option<String>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            body: Box::new(ErrorBody::new(code, message)),
            code,
            index: None,
            allow: None,
        }
    }

    /// 405 with the methods the resource allows.
    pub fn method_not_allowed(method: &hyper::Method, allowed: &[&str]) -> Self {
        let allow = allowed.join(", ");
        let mut err = ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed here; allowed: {allow}"),
        );
        err.allow = Some(allow);
        err
    }

    /// Sets `X-Keel-Index`.
    pub fn at_index(mut self, index: u64) -> Self {
        self.index = Some(index);
        self
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let msg = e.to_string();
        match e {
            WriteError::NoLeader | WriteError::NotLeader(_) => {
                ApiError::new(ErrorCode::NoLeader, msg)
            }
            WriteError::Dropped => ApiError::new(ErrorCode::NotApplied, msg),
            WriteError::OutcomeUnknown => ApiError::new(ErrorCode::OutcomeUnknown, msg),
            WriteError::ReplicationTimeout { index } => {
                let mut err = ApiError::new(ErrorCode::ReplicationTimeout, msg).at_index(index);
                err.body.index = Some(index);
                err.body.committed = Some(true);
                err
            }
            WriteError::ShuttingDown => ApiError::new(ErrorCode::ShuttingDown, msg),
            WriteError::ChangePending => ApiError::new(ErrorCode::MembershipChangePending, msg),
            WriteError::Overloaded => ApiError::new(ErrorCode::Overloaded, msg),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        let msg = e.to_string();
        match e {
            ReadError::NoLeader => ApiError::new(ErrorCode::NoLeader, msg),
            ReadError::Timeout(_) => ApiError::new(ErrorCode::Timeout, msg),
            ReadError::ShuttingDown => ApiError::new(ErrorCode::ShuttingDown, msg),
            ReadError::Overloaded => ApiError::new(ErrorCode::Overloaded, msg),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let code = match e {
            StorageError::Installing => ErrorCode::NotReady,
            _ => ErrorCode::Storage,
        };
        ApiError::new(code, e.to_string())
    }
}

/// Turns a deterministic rejection by the state machine into its error answer; passes
/// successes through.
pub fn rejected(r: &ApplyResult) -> Result<&ApplyResult, ApiError> {
    if r.is_ok() {
        return Ok(r);
    }
    // Codes the state machine does not produce (or a newer node's) read as malformed commands.
    let code = ErrorCode::parse(&r.error_code)
        .filter(|c| {
            matches!(
                c,
                ErrorCode::PreconditionFailed
                    | ErrorCode::BoundViolated
                    | ErrorCode::NotInteger
                    | ErrorCode::IdempotencyKeyReused
                    | ErrorCode::InvalidCommand
                    | ErrorCode::LeaseNotFound
                    | ErrorCode::NotHolder
                    | ErrorCode::FenceRejected
                    | ErrorCode::TxnTooLarge
            )
        })
        .unwrap_or(ErrorCode::InvalidCommand);
    let mut err = ApiError::new(code, r.error_message.clone()).at_index(r.index);
    if code == ErrorCode::BoundViolated {
        err.body.value = r.value;
    }
    if let Some(h) = r.coord.as_ref().and_then(|c| c.holder.as_ref()) {
        let name = r.error_key.clone();
        err.body.holder = Some(super::coord::holder_info(&name, h, r.index));
    }
    if !r.error_key.is_empty() {
        err.body.key = Some(r.error_key.clone());
    }
    err.body.index = Some(r.index);
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_errors_map_to_their_documented_codes() {
        let cases = [
            (WriteError::NoLeader, ErrorCode::NoLeader, 503),
            (WriteError::NotLeader(2), ErrorCode::NoLeader, 503),
            (WriteError::Dropped, ErrorCode::NotApplied, 503),
            (WriteError::OutcomeUnknown, ErrorCode::OutcomeUnknown, 504),
            (
                WriteError::ReplicationTimeout { index: 9 },
                ErrorCode::ReplicationTimeout,
                504,
            ),
            (WriteError::ShuttingDown, ErrorCode::ShuttingDown, 503),
            (
                WriteError::ChangePending,
                ErrorCode::MembershipChangePending,
                503,
            ),
            (WriteError::Overloaded, ErrorCode::Overloaded, 503),
        ];
        for (e, code, status) in cases {
            let api: ApiError = e.into();
            assert_eq!((api.code, api.code.status()), (code, status));
        }
        let api: ApiError = WriteError::ReplicationTimeout { index: 9 }.into();
        assert_eq!((api.body.index, api.body.committed), (Some(9), Some(true)));
    }

    #[test]
    fn rejections_carry_key_value_and_index() {
        let r = ApplyResult {
            index: 12,
            error_code: ErrorCode::BoundViolated.as_str().into(),
            error_message: "no".into(),
            error_key: "b".into(),
            value: Some(40),
            ..Default::default()
        };
        let err = rejected(&r).expect_err("a rejection");
        assert_eq!(err.code, ErrorCode::BoundViolated);
        assert_eq!(
            (err.body.index, err.body.value, err.body.key.as_deref()),
            (Some(12), Some(40), Some("b"))
        );
        let odd = ApplyResult {
            error_code: "from_the_future".into(),
            ..Default::default()
        };
        assert_eq!(
            rejected(&odd).expect_err("rejected").code,
            ErrorCode::InvalidCommand
        );
        assert!(rejected(&ApplyResult::default()).is_ok());
    }
}
