//! `sd_notify`: one datagram to the Unix socket named by `NOTIFY_SOCKET`, so that systemd
//! (`Type=notify`, `NotifyAccess=all`) learns which process is the service's main one after an
//! upgrade (`MAINPID=`) and that it is ready (`READY=1`). Node cannot send a Unix datagram.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `message` to `path`: a filesystem path, or `@name` for Linux's abstract namespace (as
/// systemd writes it).
pub fn notify(path: &str, message: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let sent = match path.strip_prefix('@') {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(name) => {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(message.as_bytes(), &addr)?
        }
        _ => socket.send_to(message.as_bytes(), path)?,
    };
    if sent != message.len() {
        return Err(io::Error::other("the notification was cut short"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_gets_the_datagram() -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("sticky-rs-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let receiver = UnixDatagram::bind(&dir)?;
        notify(
            dir.to_str().ok_or_else(|| io::Error::other("path"))?,
            "MAINPID=1\nREADY=1",
        )?;
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf)?;
        std::fs::remove_file(&dir)?;
        assert_eq!(&buf[..n], b"MAINPID=1\nREADY=1");
        assert!(notify("/nonexistent/sticky-rs", "READY=1").is_err());
        Ok(())
    }
}
