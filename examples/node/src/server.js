'use strict';

const http = require('node:http');
const { handle } = require('./lib/router');

const version = process.env.APP_VERSION || 'dev';
const port = Number(process.env.PORT || 8080);
const startedAt = Date.now();

if (process.argv.includes('--version')) {
  console.log(`memobuild-example-node ${version}`);
  process.exit(0);
}

const server = http.createServer((req, res) => {
  const { status, headers, body } = handle(req.method, req.url, { version, startedAt });
  res.writeHead(status, headers);
  res.end(req.method === 'HEAD' ? undefined : body);
});

server.listen(port, '0.0.0.0', () => console.log(`listening on :${port} (version ${version})`));
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.close(() => process.exit(0)));
