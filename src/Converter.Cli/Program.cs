using Converter.Cli;

return ConverterApp.Run(args);
