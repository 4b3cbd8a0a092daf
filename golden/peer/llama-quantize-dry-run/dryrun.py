"""llama-quantize --dry-run on an F32 GGUF for each file type: one row per tensor (file type, tensor, ggml type, ggml shape).
Usage: LLAMA_QUANTIZE=path/to/llama-quantize python3 dryrun.py MODEL input-f32.gguf > MODEL.tsv"""
import re,subprocess,sys
import os
Q=os.environ.get('LLAMA_QUANTIZE', 'llama-quantize')
TYPES="Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K IQ4_XS IQ4_NL Q5_0 Q5_1 Q4_0 Q8_0".split()
model,inp=sys.argv[1],sys.argv[2]
print("file_type\ttensor\ttype\tshape")
for t in TYPES:
    out=subprocess.run([Q,'--dry-run',inp,t],capture_output=True,text=True)
    txt=out.stdout+out.stderr
    n=0
    for line in txt.splitlines():
        m=re.match(r'\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[([^\]]*)\], type =\s*(\S+),(.*)$',line)
        if not m: continue
        name,shape,cur,rest=m.groups()
        dims=[int(x) for x in shape.split(',')]
        while len(dims)>1 and dims[-1]==1: dims.pop()
        mm=re.search(r'\((\w+)\)\s*$',rest)
        typ=(mm.group(1) if mm else cur).upper()
        print(f"{t}\t{name}\t{typ}\t{'x'.join(map(str,dims))}"); n+=1
    if n==0: sys.stderr.write(f"{model} {t}: no tensors\n{txt[-2000:]}\n")
