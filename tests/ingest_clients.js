// Sends a list of Segment calls through Segment's official Node.js library
// (@segment/analytics-node), for tests/ingest_it.rs:
//   node ingest_clients.js HOST WRITE_KEY CALLS.json
// (the calls as in tests/ingest_clients.py; INGEST_PACE_MS as there). Exit 0 once flushed with
// no error, 1 otherwise.
const fs = require('fs');
const { Analytics } = require('@segment/analytics-node');

async function main() {
  const [host, writeKey, path] = process.argv.slice(2);
  const calls = JSON.parse(fs.readFileSync(path, 'utf8'));
  const analytics = new Analytics({ writeKey, host, maxEventsInBatch: 100, flushInterval: 500, maxRetries: 10 });
  const pace = Number(process.env.INGEST_PACE_MS || 0);
  const errors = [];
  analytics.on('error', (e) => errors.push(String(e && (e.reason || e.message || e.code) || e)));
  for (const c of calls) {
    if (pace) await new Promise((r) => setTimeout(r, pace));
    const common = { messageId: c.messageId, timestamp: new Date(c.timestamp) };
    if (c.userId) common.userId = c.userId;
    if (c.anonymousId) common.anonymousId = c.anonymousId;
    switch (c.type) {
      case 'identify': analytics.identify({ ...common, traits: c.traits || {} }); break;
      case 'track': analytics.track({ ...common, event: c.event, properties: c.properties || {} }); break;
      case 'page': analytics.page({ ...common, name: c.name, properties: c.properties || {} }); break;
      case 'screen': analytics.screen({ ...common, name: c.name, properties: c.properties || {} }); break;
      case 'group': analytics.group({ ...common, groupId: c.groupId, traits: c.traits || {} }); break;
      case 'alias': analytics.alias({ ...common, previousId: c.previousId }); break;
      default: throw new Error(`unknown call type ${c.type}`);
    }
  }
  await analytics.closeAndFlush({ timeout: 120000 });
  if (errors.length) {
    console.error(errors.join('\n'));
    process.exit(1);
  }
  console.log(`sent ${calls.length}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
