// Send N messages to an address and receive them back with rhea; prints one JSON line.
// usage: node sendrecv.js PORT ADDRESS COUNT settled|unsettled
'use strict';
const rhea = require('rhea');

const [port, address, countArg, mode] = process.argv.slice(2);
const count = parseInt(countArg, 10);
const settled = mode === 'settled';
const container = rhea.create_container({ id: 'merpati-rhea-test' });
const result = { sent: 0, accepted: 0, received: [], properties: [], errors: [] };

// With MERPATI_RHEA_TLS_DIR (ca.pem, client.pem, client.key): AMQPS, logging in with SASL
// EXTERNAL as the client certificate's common name.
const tlsDir = process.env.MERPATI_RHEA_TLS_DIR;
const options = tlsDir
  ? {
      host: '127.0.0.1', port: parseInt(port, 10), reconnect: false, transport: 'tls',
      servername: 'localhost', enable_sasl_external: true,
      ca: require('fs').readFileSync(`${tlsDir}/ca.pem`),
      cert: require('fs').readFileSync(`${tlsDir}/client.pem`),
      key: require('fs').readFileSync(`${tlsDir}/client.key`),
    }
  : {
      host: '127.0.0.1', port: parseInt(port, 10), username: 'guest', password: 'guest',
      reconnect: false,
    };
const conn = container.connect(options);
const sender = conn.open_sender({ target: { address }, snd_settle_mode: settled ? 1 : 0 });
sender.on('sendable', (ctx) => {
  while (ctx.sender.sendable() && result.sent < count) {
    ctx.sender.send({ body: `rhea-${result.sent}`, application_properties: { n: result.sent } });
    result.sent++;
  }
  if (result.sent === count && settled) startReceiving();
});
sender.on('accepted', () => {
  result.accepted++;
  if (result.accepted === count) startReceiving();
});
let receiving = false;
function startReceiving() {
  if (receiving) return;
  receiving = true;
  conn.open_receiver({ source: { address }, snd_settle_mode: settled ? 1 : 0, autoaccept: true });
}
container.on('message', (ctx) => {
  result.received.push(ctx.message.body);
  result.properties.push(ctx.message.application_properties);
  if (result.received.length === count) ctx.connection.close();
});
container.on('connection_close', () => { console.log(JSON.stringify(result)); process.exit(0); });
for (const ev of ['connection_error', 'sender_error', 'receiver_error', 'disconnected', 'error']) {
  container.on(ev, (ctx) => {
    const err = (ctx && (ctx.error || (ctx.connection && ctx.connection.error))) || ev;
    result.errors.push(String(err && err.condition ? err.condition + ': ' + err.description : err));
    console.log(JSON.stringify(result));
    process.exit(1);
  });
}
setTimeout(() => { result.errors.push('timeout'); console.log(JSON.stringify(result)); process.exit(2); }, 20000);
