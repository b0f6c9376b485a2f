// as-threshold: the threshold-alert function in AssemblyScript, against
// perch's ABI through assembly/perch.ts.
//
// In:  sensors/<device>/temperature  {"device":"t1","temperature":31.5}
//      ("device" optional: the topic's second level is used without it)
// Out: alerts/<device>/temperature   {"device":"t1","temperature":31.5,"limit":30.0}
//      for every reading above config `limit`. Numbers are copied as
//      written in the payload and the manifest.
//
// Return codes: 0 ok; host codes are passed through (-1 when `limit` is
// missing); 1 = payload unreadable, 2 = config value not a number,
// 4 = event lengths outside the buffer.

import {
  NOT_FOUND,
  config,
  eventFits,
  eventPayload,
  eventTopic,
  jsonValue,
  parseNumber,
  publish,
  topicLevel,
} from "./perch";

// The exports every perch module has (ABI.md): keep this line.
export { perch_abi_version, perch_event_buffer, perch_event_buffer_len } from "./perch";

const ERR_PAYLOAD: i32 = 1;
const ERR_CONFIG: i32 = 2;
const ERR_BAD_EVENT: i32 = 4;

export function perch_on_event(topicLen: i32, payloadLen: i32, timestampMs: i64): i32 {
  if (!eventFits(topicLen, payloadLen)) return ERR_BAD_EVENT;
  const payload = eventPayload(topicLen, payloadLen);

  const temperatureText = jsonValue(payload, "temperature");
  if (temperatureText === null) return ERR_PAYLOAD;
  const temperature = parseNumber(temperatureText);
  if (isNaN(temperature)) return ERR_PAYLOAD;

  const limitText = config("limit");
  if (limitText === null) return NOT_FOUND;
  const limit = parseNumber(limitText);
  if (isNaN(limit)) return ERR_CONFIG;

  if (!(temperature > limit)) return 0;

  let device = jsonValue(payload, "device");
  if (device === null) device = topicLevel(eventTopic(topicLen), 1);
  if (device === null) device = "unknown";

  return publish(
    "alerts/" + device + "/temperature",
    '{"device":"' + device + '","temperature":' + temperatureText + ',"limit":' + limitText + "}",
  );
}
