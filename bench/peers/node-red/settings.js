// Node-RED settings for the bench's peer (bench/run.sh starts it with
// `node-red --settings THIS --userDir DIR --port PORT FLOWFILE`): loopback only,
// warnings only in the log, no editor tours or update checks, nothing
// persisted but the flow file. The admin API (POST /flows) stays open: the
// cold-start scenario deploys through it, on 127.0.0.1 only.
module.exports = {
    uiHost: "127.0.0.1",
    flowFilePretty: false,
    credentialSecret: false,
    logging: { console: { level: "warn", metrics: false, audit: false } },
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false, updateNotification: false },
    editorTheme: { tours: false, projects: { enabled: false } },
    functionExternalModules: false,
    exportGlobalContextKeys: false,
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
};
