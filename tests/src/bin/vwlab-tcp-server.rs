//! `vwlab-tcp-server PORT ID HOLD_MS`: the lab's TCP request/response
//! service (see `vipwatch_tests::tcp`), as a process of its own.

use std::time::Duration;

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, id, hold_ms] = args.as_slice() else {
        anyhow::bail!("usage: vwlab-tcp-server PORT ID HOLD_MS");
    };
    vipwatch_tests::tcp::server_main(
        port.parse().context("PORT")?,
        id.parse().context("ID")?,
        Duration::from_millis(hold_ms.parse().context("HOLD_MS")?),
    )
}
