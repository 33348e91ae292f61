// The portal's only script, served from /portal/static/app.js: the portal's Content-Security-Policy
// allows scripts from the portal itself and nothing inline. Each part wakes up only on the page
// that has its elements.
'use strict';

function esc(s){return String(s).replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));}

// A load bar as SVG: a width attribute, not a style, so no inline style is needed.
function bar(p,hot){return '<svg class="bar" aria-hidden="true" viewBox="0 0 100 10" preserveAspectRatio="none"><rect'+(hot?' class="hot"':'')+' width="'+p+'" height="10"></rect></svg>';}

const REMOVE_CONFIRM='Remove this backend? It takes no new requests from now on and leaves once its requests finish.';

// Forms that ask first (data-confirm), and copy buttons (data-copy names the element to copy).
document.addEventListener('submit',e=>{const f=e.target;
 if(f instanceof HTMLFormElement&&f.dataset.confirm&&!window.confirm(f.dataset.confirm))e.preventDefault();});
document.addEventListener('click',e=>{const b=e.target instanceof Element?e.target.closest('[data-copy]'):null;if(!b)return;
 const src=document.getElementById(b.dataset.copy);if(src&&navigator.clipboard)navigator.clipboard.writeText(src.textContent);});

// Playground: streams a chat reply through /v1 with the key the user pasted.
(function(){
const play=document.getElementById('play');if(!play)return;
play.addEventListener('submit',async e=>{e.preventDefault();
const out=document.getElementById('reply'),meta=document.getElementById('meta');out.textContent='';meta.textContent='';
const t0=performance.now();let first=null;
const r=await fetch('/v1/chat/completions',{method:'POST',headers:{'Content-Type':'application/json','Authorization':'Bearer '+document.getElementById('key').value},
body:JSON.stringify({model:document.getElementById('model').value,stream:true,stream_options:{include_usage:true},messages:[{role:'user',content:document.getElementById('prompt').value}]})});
if(!r.ok){const j=await r.json().catch(()=>null);out.textContent='HTTP '+r.status+': '+(j&&j.error?j.error.message:'');return;}
const rd=r.body.getReader(),dec=new TextDecoder();let buf='',usage=null;
for(;;){const {done,value}=await rd.read();if(done)break;buf+=dec.decode(value,{stream:true});let i;
while((i=buf.indexOf('\n\n'))>=0){const ev=buf.slice(0,i);buf=buf.slice(i+2);
for(const line of ev.split('\n')){if(!line.startsWith('data: '))continue;const d=line.slice(6);if(d==='[DONE]')continue;
try{const j=JSON.parse(d);if(j.error){out.textContent+='\n['+j.error.message+']';continue;}
const c=j.choices&&j.choices[0]&&j.choices[0].delta&&j.choices[0].delta.content;if(c){if(first===null)first=performance.now();out.textContent+=c;}
if(j.usage)usage=j.usage;}catch(_){}}}}
meta.textContent='first token '+Math.round((first??performance.now())-t0)+' ms, queue '+(r.headers.get('x-fairgate-queue-wait-ms')||0)+' ms'+(usage?', '+usage.prompt_tokens+' + '+usage.completion_tokens+' tokens':'');});
})();

// Operator: fair share, live. Replaces #live with fresh data every 2 s.
(function(){
const live=document.getElementById('live');if(!live)return;
async function refresh(){try{const r=await fetch('/portal/api/scheduler',{credentials:'same-origin'});
if(!r.ok)return;const d=await r.json();let h='';
for(const m of d.models){h+='<h3>'+esc(m.model)+' <span class="muted">'+m.mode+', '+m.in_flight+'/'+m.max_in_flight+' in flight, '+m.queued+' queued, headroom '+m.headroom+'</span></h3>';
h+='<div class="scroll"><table><thead><tr><th>Tenant</th><th>Weight</th><th>Share (1 min)</th><th>Queued</th><th>In flight</th><th>TTFT p50 / p99</th></tr></thead><tbody>';
for(const t of m.tenants){h+='<tr data-tenant="'+esc(t.tenant)+'"><td>'+esc(t.tenant)+'</td><td class="w">'+t.weight+'</td><td>'+(100*t.share).toFixed(1)+'%</td><td>'+t.queued+'</td><td>'+t.in_flight+'</td><td>'+(t.ttft_p50_ms==null?'—':t.ttft_p50_ms.toFixed(0)+' / '+t.ttft_p99_ms.toFixed(0)+' ms')+'</td></tr>';}
h+='</tbody></table></div>';}live.innerHTML=h;}catch(e){}}
refresh();setInterval(refresh,2000);
})();

// Operator: models and backends. Polls /portal/api/backends every 2 s and updates the tables in
// place: cells whose text changed, rows for backends added or gone; a row's buttons only when
// its drain state changes (so keyboard focus on a button survives the refresh).
(function(){
if(!document.getElementById('live-status')||!document.querySelector('section[data-model]'))return;
const csrf=(document.querySelector('input[name=csrf]')||{}).value||'';
function badge(t,c){return '<span class="badge '+c+'">'+esc(t)+'</span>';}
const cls={ok:'ok',busy:'warn',down:'bad'};
function num(v){return v==null?'—':(Number.isInteger(v)?String(v):v.toFixed(1));}
function state(b){let h=b.state==='healthy'?badge('healthy','ok'):b.state==='half_open'?badge('half-open','warn'):badge('ejected','bad');
 if(b.removing)h+=' '+badge('removing','warn');else if(b.draining)h+=' '+badge('draining','warn');return h;}
function kv(v,hot){if(v==null)return '—';const p=Math.max(0,Math.min(100,Math.round(v*100)));
 return '<span class="nowrap">'+bar(p,v>=hot)+p+'%</span>';}
function age(ms,stale){if(ms==null)return '—';const a=ms<1000?ms+' ms':Math.floor(ms/1000)+' s';return ms>stale?a+' (stale)':a;}
function mode(b){return b.removing?'removing':b.draining?'draining':'active';}
function button(m,u,act,label,confirmIt){return '<form class="inline" method="post" action="/portal/operator/models/'+esc(encodeURIComponent(m))+'/backends/'+act+'"'+
 (confirmIt?' data-confirm="'+esc(REMOVE_CONFIRM)+'"':'')+
 '><input type="hidden" name="csrf" value="'+esc(csrf)+'"><input type="hidden" name="url" value="'+esc(u)+'"><button type="submit" aria-label="'+label+' '+esc(u)+'">'+label+'</button></form>';}
function actions(m,b){const md=mode(b);return '<span class="nowrap">'+(md==='removing'?button(m,b.url,'resume','Resume',false):
 button(m,b.url,md==='draining'?'resume':'drain',md==='draining'?'Resume':'Drain',false)+' '+button(m,b.url,'remove','Remove',true))+'</span>';}
// A backend's name (when the gateway reports one) before its address, as the server renders it.
function cells(d,b){return [(b.name?'<strong>'+esc(b.name)+'</strong> ':'')+'<code>'+esc(b.url)+'</code>'+(b.origin==='api'?' <span class="muted">(added live)</span>':''),state(b),b.in_flight+' / '+b.max_in_flight,
 num(b.waiting),num(b.running),kv(b.kv_cache_usage,d.saturation_kv_usage),age(b.metrics_age_ms,d.metrics_stale_ms),String(b.consecutive_failures),
 String(b.ejections),b.last_error?esc(b.last_error):'—',b.attempts+' / '+b.failures+' / '+b.retries,String(b.prefix_hits)];}
function summary(m){return badge(m.status,cls[m.status]||'bad')+' '+m.healthy+' of '+m.total+' healthy · '+m.in_flight+' / '+m.capacity+' in flight · '+m.queued+' queued · context '+(m.context_length==null?'—':m.context_length+' tokens');}
function set(el,h){if(el.dataset.h!==h){el.innerHTML=h;el.dataset.h=h;}}
function show(d){for(const m of d.models){
 const sec=[...document.querySelectorAll('section[data-model]')].find(s=>s.dataset.model===m.model);if(!sec)continue;
 set(sec.querySelector('[data-f=summary]'),summary(m));
 const tb=sec.querySelector('tbody'),labels=[...sec.querySelectorAll('thead th')].map(t=>t.textContent);
 const seen=new Set();
 for(const b of m.backends){seen.add(b.url);
  let tr=[...tb.querySelectorAll('tr[data-url]')].find(r=>r.dataset.url===b.url);
  if(!tr){tr=document.createElement('tr');tr.dataset.url=b.url;tr.dataset.mode='';
   for(const l of labels){const td=document.createElement('td');td.dataset.label=l;tr.appendChild(td);}tb.appendChild(tr);}
  const c=cells(d,b);c.forEach((h,i)=>set(tr.cells[i],h));
  if(tr.dataset.mode!==mode(b)){tr.dataset.mode=mode(b);tr.cells[c.length].innerHTML=actions(m.model,b);}}
 for(const tr of [...tb.querySelectorAll('tr[data-url]')])if(!seen.has(tr.dataset.url))tr.remove();
 const empty=tb.querySelector('tr.empty');if(empty)empty.hidden=m.backends.length>0;}}
const status=document.getElementById('live-status');
function say(t){if(status.textContent!==t)status.textContent=t;}
async function refresh(){try{const r=await fetch('/portal/api/backends',{credentials:'same-origin',headers:{'Accept':'application/json'}});
 if(!r.ok||!(r.headers.get('content-type')||'').includes('json'))throw new Error('HTTP '+r.status);
 show(await r.json());say('Updates every 2 s.');}
 catch(e){say('Live updates stopped (has the session ended?): reload the page.');}}
setInterval(refresh,2000);
})();

// Telemetry (operators' and each person's own): an element with data-live-src is replaced every
// 5 s by the server-drawn fragment at that address, so the charts are drawn in one place.
(function(){
const els=[...document.querySelectorAll('[data-live-src]')];if(!els.length)return;
async function refresh(el){try{const r=await fetch(el.dataset.liveSrc,{credentials:'same-origin',headers:{'Accept':'text/html'}});
 if(!r.ok||!(r.headers.get('content-type')||'').includes('text/html'))return;
 const h=await r.text();if(el.dataset.h!==h){el.innerHTML=h;el.dataset.h=h;el.dataset.updated=String(Date.now());}}catch(e){}}
setInterval(()=>els.forEach(refresh),5000);
})();
