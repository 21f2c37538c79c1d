import time, jax, jax.numpy as jnp, numpy as np
B,T,H=32,256,512
w=jax.random.normal(jax.random.PRNGKey(1),(H,4*H))*0.05; xw=jnp.ones((T,B,4*H))
@jax.jit
def f(xw,w):
  def step(h,x):
    z=x+h@w; return jnp.tanh(z[:,:H]),None
  return jax.lax.scan(step,jnp.zeros((B,H)),xw)[0]
@jax.jit
def g(h,w):  # one dot alone, 256 times via python
  return h@w
h=jnp.ones((B,H))
jax.block_until_ready(f(xw,w)); jax.block_until_ready(g(h,w))
for name,fn in [('scan256',lambda: f(xw,w)),('dot1',lambda: g(h,w))]:
  ts=[]
  for _ in range(15):
    t=time.perf_counter(); jax.block_until_ready(fn()); ts.append(time.perf_counter()-t)
  print(name,'%.3f ms'%(1e3*np.median(ts)))
import torch; torch.set_num_threads(2)
ht=torch.ones(B,H); wt=torch.randn(H,4*H)
for _ in range(5): ht@wt
ts=[]
for _ in range(15):
  t=time.perf_counter()
  for _ in range(256): ht@wt
  ts.append(time.perf_counter()-t)
print('torch 256 dots %.3f ms'%(1e3*np.median(ts)))
