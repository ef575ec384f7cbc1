//! Telling a TLS refusal from a broken request.
//!
//! With TLS 1.3 a client's handshake is done once it has sent its last flight, before the node
//! has checked the client's certificate. A node that refuses the certificate answers with an
//! alert and never reads a request. The alert reaches hyper in one of two ways:
//!
//! - the request was handed to the connection first: reading the answer fails with the alert,
//!   which is in the error's chain of sources;
//! - the connection read the alert and ended before the request was handed to it: hyper then
//!   says only that the connection "was not ready", and the alert is gone with the connection's
//!   task.
//!
//! So every TLS connection is wrapped in [`Watched`], which keeps the first refusal it reads in a
//! [`RefusalSlot`] shared with hyper's record of the connection ([`Connected`]'s extras), where
//! [`refusal_of`] finds it from the request's error, whichever way the race went.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use rustls::AlertDescription;

/// The refusal a connection read, if any; shared by the connection and hyper's record of it.
#[derive(Clone, Debug, Default)]
pub(crate) struct RefusalSlot(Arc<OnceLock<AlertDescription>>);

/// A connector whose connections remember a TLS refusal ([`Watched`]).
#[derive(Clone, Debug)]
pub(crate) struct WatchingConnector<C>(pub(crate) C);

/// A connection that remembers the first TLS refusal it reads or writes into, as long as it has
/// read nothing else: a connection that has read an answer was not refused, whatever comes after.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    io: T,
    slot: RefusalSlot,
    /// A read has succeeded (the handshake is done when the connection is handed over, so this
    /// is an answer's bytes, or the end).
    read_any: bool,
}

impl<C> tower_service::Service<Uri> for WatchingConnector<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
{
    type Response = Watched<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.0.call(dst);
        Box::pin(async move {
            Ok(Watched {
                io: connecting.await?,
                slot: RefusalSlot::default(),
                read_any: false,
            })
        })
    }
}

impl<T> Watched<T> {
    /// Keeps the refusal carried by `result`'s error, if it is one and nothing was read before.
    fn note<R>(&self, result: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if let Poll::Ready(Err(e)) = &result {
            if let Some(alert) = handshake_refusal(e).filter(|_| !self.read_any) {
                let _ = self.slot.0.set(alert);
            }
        }
        result
    }
}

impl<T: Connection> Connection for Watched<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.slot.clone())
    }
}

impl<T: Read + Unpin> Read for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        this.read_any |= matches!(r, Poll::Ready(Ok(())));
        this.note(r)
    }
}

impl<T: Write + Unpin> Write for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note(r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.note(r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.note(r)
    }
}

/// The TLS alert with which a node refused this client's certificate, if that is what ended the
/// request `e`: the node then never read it. Found in the error's sources, or in what the
/// request's connection read (when the connection ended before the request was handed to it).
pub(crate) fn refusal_of(e: &hyper_util::client::legacy::Error) -> Option<AlertDescription> {
    if let Some(alert) = handshake_refusal(e) {
        return Some(alert);
    }
    let mut extras = hyper::http::Extensions::new();
    e.connect_info()?.get_extras(&mut extras);
    extras.get::<RefusalSlot>()?.0.get().copied()
}

/// The TLS alert with which a server refused the handshake (its certificate checks), if one is
/// in `e`'s chain of sources.
pub(crate) fn handshake_refusal(e: &(dyn std::error::Error + 'static)) -> Option<AlertDescription> {
    use AlertDescription as A;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    // Bounded: error chains are a few links long.
    for _ in 0..16 {
        let err = source?;
        if let Some(rustls::Error::AlertReceived(alert)) = err.downcast_ref::<rustls::Error>() {
            return matches!(
                alert,
                A::CertificateRequired
                    | A::BadCertificate
                    | A::UnsupportedCertificate
                    | A::CertificateRevoked
                    | A::CertificateExpired
                    | A::CertificateUnknown
                    | A::UnknownCA
                    | A::AccessDenied
                    | A::HandshakeFailure
                    | A::DecryptError
            )
            .then_some(*alert);
        }
        // rustls's error travels inside an io::Error (inside another one, while the connector
        // sets the connection up), whose payload `source()` skips.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            source = Some(inner as &(dyn std::error::Error + 'static));
            continue;
        }
        source = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(alert: AlertDescription) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(alert),
        )
    }

    /// Only the alerts of a refused certificate or handshake are refusals; anything else, a
    /// closing alert or a plain I/O error, is not (the request may have been served).
    #[test]
    fn only_certificate_and_handshake_alerts_are_refusals() {
        assert_eq!(
            handshake_refusal(&wrapped(AlertDescription::CertificateRequired)),
            Some(AlertDescription::CertificateRequired)
        );
        // Nested the way the connector nests it.
        let nested = io::Error::other(wrapped(AlertDescription::UnknownCA));
        assert_eq!(
            handshake_refusal(&nested),
            Some(AlertDescription::UnknownCA)
        );
        for other in [
            AlertDescription::CloseNotify,
            AlertDescription::InternalError,
            AlertDescription::DecodeError,
        ] {
            assert_eq!(handshake_refusal(&wrapped(other)), None, "{other:?}");
        }
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(handshake_refusal(&reset), None);
    }

    /// A connection that has read an answer keeps no refusal that comes after it, and an empty
    /// slot names none.
    #[test]
    fn a_refusal_after_an_answer_is_not_kept() {
        let mut w = Watched {
            io: (),
            slot: RefusalSlot::default(),
            read_any: true,
        };
        let _ = w.note::<()>(Poll::Ready(Err(wrapped(
            AlertDescription::CertificateRequired,
        ))));
        assert_eq!(w.slot.0.get(), None);
        w.read_any = false;
        let _ = w.note::<()>(Poll::Ready(Err(wrapped(AlertDescription::BadCertificate))));
        assert_eq!(w.slot.0.get(), Some(&AlertDescription::BadCertificate));
    }
}
