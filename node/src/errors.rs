//! Errors thrown to JavaScript, each with a `code` that JavaScript reads instead of parsing the
//! message: an errno name (`EADDRINUSE`), Node's lookup codes (`ENOTFOUND`, `EAI_AGAIN`), or
//! one of the `ERR_` codes below. Errors of the router's constructor also carry what
//! `lib/binding.js` needs to rebuild Node's own listen error (see [`start_error`]).

use std::io;

use napi::bindgen_prelude::*;

use sticky_rs::router::error::{BindError, LookupError};

/// The code of a thrown error (napi puts the status text in the error's `code`).
#[derive(Debug, Clone)]
pub struct Code(String);

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// What the binding's functions return.
pub type Result<T> = napi::Result<T, Code>;

/// A value JavaScript passed that the core refuses.
pub const INVALID: &str = "ERR_INVALID_ARG_VALUE";
/// A method of a native object that was closed.
pub const CLOSED: &str = "ERR_STICKY_RS_CLOSED";
/// Anything else.
pub const FAILED: &str = "ERR_STICKY_RS";

/// An error with `code` and `message`.
pub fn error(code: &str, message: impl Into<String>) -> Error<Code> {
    Error::new(Code(code.to_owned()), message.into())
}

/// What JavaScript needs to know of an error of the core.
struct Described {
    code: String,
    message: String,
    /// OS errors: the number, and the text in lower case as libuv says it.
    errno: Option<(i32, String)>,
    /// A listener that could not be bound: its index.
    listener: Option<u32>,
    /// A host name that did not resolve.
    hostname: Option<String>,
}

fn describe(e: &io::Error) -> Described {
    let inner = e.get_ref();
    if let Some(lookup) = inner.and_then(|i| i.downcast_ref::<LookupError>()) {
        return Described {
            code: lookup.code.to_owned(),
            message: format!("getaddrinfo {} {}", lookup.code, lookup.host),
            errno: None,
            listener: None,
            hostname: Some(lookup.host.clone()),
        };
    }
    let bind = inner.and_then(|i| i.downcast_ref::<BindError>());
    let listener = bind.map(|b| u32::try_from(b.listener).unwrap_or(u32::MAX));
    match bind.map(|b| b.code).or_else(|| e.raw_os_error()) {
        Some(raw) => {
            let errno = nix::errno::Errno::from_raw(raw);
            let desc = errno.desc();
            let mut lower = desc.chars();
            let text = lower.next().map_or_else(String::new, |first| {
                first.to_lowercase().chain(lower).collect::<String>()
            });
            Described {
                code: format!("{errno:?}"),
                message: format!("{errno:?}: {desc}"),
                errno: Some((raw, text)),
                listener,
                hostname: None,
            }
        }
        None => Described {
            code: FAILED.to_owned(),
            message: e.to_string(),
            errno: None,
            listener,
            hostname: None,
        },
    }
}

/// An error of the core as a method throws it: the errno name (or [`FAILED`]) as its code,
/// the message `EMFILE: Too many open files` or the core's text.
pub fn os_error(e: io::Error) -> Error<Code> {
    let d = describe(&e);
    error(&d.code, d.message)
}

/// An error of the router's constructor (binding, resolving the host), thrown now with the
/// properties `lib/binding.js` rebuilds Node's listen error from: `code`, and as they apply
/// `errno` (the OS's number), `description` (its text as libuv says it), `listener` (the index of
/// the listener that could not be bound), `syscall` and `hostname` (a failed lookup).
pub fn start_error(env: &Env, e: &io::Error) -> Error<Code> {
    let d = describe(e);
    let thrown = (|| -> napi::Result<()> {
        let mut js = env.create_error(Error::new(Status::GenericFailure, d.message.clone()))?;
        js.set("code", d.code.as_str())?;
        if let Some((errno, description)) = &d.errno {
            js.set("errno", *errno)?;
            js.set("description", description.as_str())?;
        }
        if let Some(listener) = d.listener {
            js.set("listener", listener)?;
        }
        if let Some(hostname) = &d.hostname {
            js.set("syscall", "getaddrinfo")?;
            js.set("hostname", hostname.as_str())?;
        }
        env.throw(js)
    })();
    match thrown {
        // Thrown already: napi throws nothing more for a pending exception.
        Ok(()) => error(Status::PendingException.as_ref(), d.message),
        Err(_) => error(&d.code, d.message),
    }
}
