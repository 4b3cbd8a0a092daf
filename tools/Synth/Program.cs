Console.WriteLine("synth");
