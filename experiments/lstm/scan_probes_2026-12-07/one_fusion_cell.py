import sys, time, functools
import jax, jax.numpy as jnp, numpy as np
from dl10_jax.models import recurrent as R
B=int(sys.argv[1]); T,H=128,512
k=jax.random.split(jax.random.PRNGKey(0),3)
xw=jax.random.normal(k[0],(T,B,4*H))*0.5; w=jax.random.normal(k[1],(H,4*H))*0.05
h0=jnp.zeros((B,H)); c0=jnp.zeros((B,H)); mask=jnp.zeros((T,B))
S=np.concatenate([np.full(H,.5),np.full(H,.5),np.ones(H),np.full(H,.5)]).astype(np.float32)

@jax.custom_vjp
def alt(xw,w,h0,c0): return alt_fwd(xw,w,h0,c0)[0]
def alt_fwd(xw,w,h0,c0):
  def step(carry,xw_t):
    h,c=carry
    z=xw_t+h@w
    a=S*jnp.tanh(S*z)+(1-S)
    i,f,g,o=jnp.split(a,4,axis=-1)
    c=f*c+i*g; h=o*jnp.tanh(c)
    return (h,c),(h,c,a)
  (h,c),(hs,cs,acts)=jax.lax.scan(step,(h0,c0),xw)
  return hs,(w,h0,c0,hs,cs,acts)
def alt_bwd(res,dys):
  w,h0,c0,hs,cs,acts=res
  hp=jnp.concatenate([h0[None],hs[:-1]]); cp=jnp.concatenate([c0[None],cs[:-1]])
  def step(carry,inp):
    dh,dc=carry; dy,a,cn,cpr=inp
    i,f,g,o=jnp.split(a,4,axis=-1)
    dhn=dh+dy; tc=jnp.tanh(cn)
    dcn=dc+dhn*o*(1-tc*tc)
    da=jnp.concatenate([dcn*g,dcn*cpr,dcn*i,dhn*tc],-1)
    dz=da*(S*S-(a-1+S)**2)
    return (dz@w.T, dcn*f), dz
  (dh0,dc0),dz=jax.lax.scan(step,(jnp.zeros_like(h0),jnp.zeros_like(c0)),(dys,acts,cs,cp),reverse=True)
  dw=jnp.einsum('tbh,tbg->hg',hp,dz)
  return dz,dw,dh0,dc0
alt.defvjp(alt_fwd,alt_bwd)

def l_orig(xw,w):
  ys,h,c=R._scan('lstm',False,xw,w,h0,c0,mask); return jnp.sum(ys*ys)
def l_alt(xw,w):
  ys=alt(xw,w,h0,c0); return jnp.sum(ys*ys)
fs={'orig':jax.jit(jax.value_and_grad(l_orig,argnums=(0,1))),'alt':jax.jit(jax.value_and_grad(l_alt,argnums=(0,1)))}
outs={n:jax.block_until_ready(f(xw,w)) for n,f in fs.items()}
print('max diff', [float(jnp.max(jnp.abs(a-b))/ (jnp.max(jnp.abs(a))+1e-9)) for a,b in zip(jax.tree.leaves(outs['orig']),jax.tree.leaves(outs['alt']))])
res={}
for r in range(3):
  for n,f in fs.items():
    for _ in range(5):
      t=time.perf_counter(); jax.block_until_ready(f(xw,w)); res.setdefault(n,[]).append(time.perf_counter()-t)
for n in fs: print(n,'median ms %.1f'%(1e3*np.median(res[n])))
import tempfile, glob, sys as _s
_s.path.insert(0,'scripts')
from profile_step import summarise
for n,f in fs.items():
  d=tempfile.mkdtemp()
  with jax.profiler.trace(d):
    for _ in range(5): jax.block_until_ready(f(xw,w))
  xs=glob.glob(d+'/**/*.xplane.pb',recursive=True)[0]
  s=summarise(xs,5)
  tot=sum(s['ms_per_step'].values())
  print(n,'thread ms total %.1f'%tot)
  for kname,v in list(s['ms_per_step'].items())[:14]: print('   %-45s %7.2f ms  %5.0f calls'%(kname,v,s['calls_per_step'][kname]))
