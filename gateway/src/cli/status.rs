//! `perch status`: a running gateway's retained status summary, as a table
//! or JSON.

use anyhow::Context;

use super::FnTarget;

pub(super) fn status(target: FnTarget, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let endpoint = super::endpoint(target)?;
    let summary = runtime.block_on(crate::telemetry::admin::status::fetch(&endpoint))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!(
            "{}",
            crate::telemetry::admin::status::table(&summary, crate::kit::clock::now_ms())
        );
    }
    Ok(())
}
