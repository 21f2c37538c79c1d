import sys, time, functools
import jax, jax.numpy as jnp, numpy as np
from dl10_jax.models import recurrent as R
cell = sys.argv[1]; B=int(sys.argv[2]); unrolls=[int(u) for u in sys.argv[3].split(',')]
T,H=128,512; G=4 if cell=='lstm' else 1
k=jax.random.split(jax.random.PRNGKey(0),3)
xw=jax.random.normal(k[0],(T,B,G*H))*0.5; w=jax.random.normal(k[1],(H,G*H))*0.05
h0=jnp.zeros((B,H)); c0=jnp.zeros((B,H)) if cell=='lstm' else jnp.zeros((B,0))
mask=jnp.zeros((T,B))
orig=jax.lax.scan
res={}
for rnd in range(2):
 for u in unrolls:
  jax.lax.scan = functools.partial(orig, unroll=u)
  def loss(xw,w):
    ys,h,c=R._scan(cell,False,xw,w,h0,c0,mask)
    return jnp.sum(ys*ys)
  f=jax.jit(jax.value_and_grad(loss,argnums=(0,1)))
  jax.block_until_ready(f(xw,w)); jax.block_until_ready(f(xw,w))
  ts=[]
  for _ in range(7):
    t=time.perf_counter(); jax.block_until_ready(f(xw,w)); ts.append(time.perf_counter()-t)
  res.setdefault(u,[]).extend(ts)
  jax.lax.scan=orig
for u in unrolls: print(cell,B,'unroll',u,'median ms %.1f'%(1e3*np.median(res[u])))
